"""Pagination for list endpoints: ``?limit=&offset=`` with a total count (NetBox style)."""

from rest_framework.pagination import LimitOffsetPagination


class Pagination(LimitOffsetPagination):
    max_limit = 1000
