"""Admin for runs (read-only; never deleted: they are the audit trail), API tokens (no key is ever shown but once, on
creation) and what every app's admin shares.

A run's page follows the run live: its status, progress bar, ETA, steps with their durations and newest events are a
server-rendered fragment that ``core/js/refresh.js`` fetches again every two seconds while the run is active, with
a Cancel button for who may cancel (see ``RunAdmin``).

Shared: ``start_each`` (an action over the selection that calls a service), ``CheckedActions`` (an action the user
may not run answers 403), ``ReadOnlyInline`` and ``DeleteThroughRun``: objects that own things in a cluster (a
deployment's namespace and pods, a cluster's collectors and RBAC) are never deleted as rows. Their Delete button
and list action show what will be removed from the cluster, then start the deletion run (the service the API's
DELETE calls, with its permission and refusals) and open that run's page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import knox.admin  # noqa: F401  (registers knox's token admin first, so the one below replaces it)
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime
from knox.models import AuthToken

from . import tokens, workflow
from .choices import RunStatus, StepPhase, StepStatus
from .errors import Refused
from .models import Event, Run, RunStep

STATUS_COLOURS = {
    "pending": "#6c757d",
    "running": "#0d6efd",
    "waiting": "#0dcaf0",
    "cleaning_up": "#fd7e14",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "cancelled": "#6f42c1",
    "skipped": "#adb5bd",
}


def status_badge(value: str, label: str | None = None) -> str:
    colour = STATUS_COLOURS.get(value, "#6c757d")
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:8px">{}</span>',
        colour,
        label or value,
    )


def start_each(
    model_admin: admin.ModelAdmin, request, objects: Iterable[Any], start: Callable[[Any], Any], *, done: str
) -> int:
    """An admin action over the selected objects: ``start(obj)`` calls the service (the same one the API calls);
    a refusal becomes that object's warning and the others go on; ``done`` (with ``{count}``) sums up."""
    started = 0
    for obj in objects:
        try:
            start(obj)
        except Refused as exc:
            model_admin.message_user(request, str(exc), messages.WARNING)
            continue
        started += 1
    model_admin.message_user(request, done.format(count=started))
    return started


class CheckedActions:
    """ModelAdmin mixin: an action request naming an action this user may not run (its ``permissions`` are not
    met, so the admin does not offer it) answers 403; Django alone would show the list again with 200."""

    def changelist_view(self, request, extra_context=None):
        action = (
            request.POST.get("action") if request.method == "POST" and "_save" not in request.POST else None
        )
        if action and action not in self.get_actions(request):
            raise PermissionDenied
        return super().changelist_view(request, extra_context)


class DeleteThroughRun:
    """ModelAdmin mixin for objects whose deletion must remove what they own in a cluster: a database cascade
    would leave it running there. The Delete button (``delete_view``) and the list action named by
    ``deletion_action`` both show a confirmation page listing, per object, what leaves the cluster
    (:meth:`deletion_removes`) and the deletion run's steps, with the options the API takes (``deletion_form``,
    e.g. a cluster's ``force``); confirming calls :meth:`start_deletion` (the API's service) for each object and
    opens the started run's page (the run list, for several). A refusal (already deleting, active deployments)
    is shown on the page and starts nothing. The permission is the model's delete permission, as for the API's
    ``DELETE``. Rows are never deleted by the admin itself: ``delete_model``/``delete_queryset`` refuse."""

    deletion_kind: str = ""  # the workflow whose step titles the confirmation page lists
    deletion_action: str = ""  # the list action that confirms through the same page
    deletion_form: type[forms.Form] = forms.Form  # options the API's DELETE takes too

    def start_deletion(self, request, obj, options: dict) -> Run:  # pragma: no cover - abstract
        raise NotImplementedError

    def deletion_removes(self, obj) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # a plain cascade; the deletion action runs the workflow
        return actions

    def delete_model(self, request, obj) -> None:
        raise PermissionDenied("deleted only through its deletion run")

    def delete_queryset(self, request, queryset) -> None:
        raise PermissionDenied("deleted only through its deletion run")

    def delete_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_delete_permission(request, obj):
            raise PermissionDenied
        return self.confirm_deletion(request, [obj], from_action=False)

    def confirm_deletion(self, request, objects: Sequence[Any], *, from_action: bool):
        """The confirmation page; on its POST (``post=yes``) start the runs and redirect to them."""
        confirmed = request.method == "POST" and request.POST.get("post") == "yes"
        form = self.deletion_form(request.POST if confirmed else None)
        refusals: list[str] = []
        status = 200
        if confirmed and form.is_valid():
            runs = []
            for obj in objects:
                try:
                    run = self.start_deletion(request, obj, form.cleaned_data)
                except Refused as exc:
                    refusals.append(f"{obj}: {exc}")
                    status = exc.status
                    continue
                self.log_change(request, obj, f"Deletion requested: run {run.pk}")
                runs.append(run)
            if runs:
                for refusal in refusals:
                    self.message_user(request, refusal, messages.WARNING)
                return self._open_runs(request, runs)
        elif confirmed:
            status = 400
        many = f"{len(objects)} {self.opts.verbose_name_plural}"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"Delete {objects[0] if len(objects) == 1 else many}?",
            "objects": [(obj, self.deletion_removes(obj)) for obj in objects],
            "steps": self._deletion_steps(),
            "form": form,
            "refusals": refusals,
            "from_action": from_action,
            "action": self.deletion_action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "cancel_url": (
                reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
                if from_action
                else reverse(
                    f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[objects[0].pk]
                )
            ),
        }
        return TemplateResponse(request, "admin/delete_through_run.html", context, status=status)

    def _deletion_steps(self) -> list[str]:
        try:
            return [step.title for step in workflow.get_workflow(self.deletion_kind).steps]
        except KeyError:
            return []

    def _open_runs(self, request, runs: list[Run]) -> HttpResponseRedirect:
        links = format_html_join(
            ", ", '<a href="{}">{}</a>', ((reverse("admin:core_run_change", args=[r.pk]), r.pk) for r in runs)
        )
        self.message_user(request, format_html("Deletion started: run {}", links), messages.SUCCESS)
        if not request.user.has_perm("core.view_run"):
            # The runs' pages would answer 403: back to the list, whose message names the runs.
            return HttpResponseRedirect(
                reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
            )
        if len(runs) == 1:
            return HttpResponseRedirect(reverse("admin:core_run_change", args=[runs[0].pk]))
        ids = ",".join(str(r.pk) for r in runs)
        return HttpResponseRedirect(f"{reverse('admin:core_run_changelist')}?id__in={ids}")


class RecordAdmin(admin.ModelAdmin):
    """A record nobody writes by hand: no add, no change (the page shows it without a Save button), no delete
    (records are removed by their retention, or with what they belong to). Viewing takes the view permission."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


# --- runs ------------------------------------------------------------------------------------------------------

LIVE_REFRESH_SECONDS = 2  # how often an active run's page fetches its live section again
LIVE_EVENTS = 50  # the newest events shown on a run's page (the API's /runs/{id} has them all)


def seconds_text(seconds: float) -> str:
    """A duration as people read it: ``4.2 s``, ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def live_eta(run: Run, steps: Sequence[RunStep], now: datetime) -> tuple[datetime | None, str]:
    """When an active run should end, as it stands ``now``; and why it differs from the stored estimate, if it does.

    The stored ``Run.eta`` is written when a step reports progress or starts waiting, so it goes stale as soon as a
    step outlasts its estimate: a waiting step writes nothing between its checks, and a run no worker has picked
    up writes nothing at all. Shown as it is, the ETA would slide into the past while the run visibly goes on. So
    the estimate shown is never earlier than what is certainly still ahead: the current step's next check (a
    waiting step cannot finish before it) or now, plus the estimates of the steps not started yet. While cleanup
    runs, the main steps' estimate no longer applies: only the cleanup steps' count.
    """
    if run.status not in RunStatus.active():
        return None, ""
    phase = StepPhase.CLEANUP if run.status == RunStatus.CLEANING_UP else StepPhase.MAIN
    ahead = [s for s in steps if s.phase == phase and s.status in StepStatus.active()]
    current = next((s for s in ahead if s.status != StepStatus.PENDING), None)
    later = timedelta(seconds=sum(s.eta_seconds for s in ahead if s is not current))
    floor = now
    if current is not None and current.status == StepStatus.WAITING and run.wake_at and run.wake_at > now:
        floor = run.wake_at
    floor += later
    stored = run.eta if phase == StepPhase.MAIN else None
    if stored is not None and stored >= floor:
        return stored, ""
    if current is not None:
        why = f"{current.title} is taking longer than its estimate of {seconds_text(current.eta_seconds)}"
    elif run.status == RunStatus.PENDING:
        why = "no worker has started the run yet"
    else:
        why = "re-estimated from the steps still ahead"
    return floor, why


def live_run(request, run: Run, *, can_cancel: bool) -> dict[str, Any]:
    """What a run's live section shows (three queries: the run was read by the caller, then its steps and its
    newest events)."""
    now = timezone.now()
    steps = list(run.steps.order_by("order"))
    events = list(run.events.order_by("-id")[: LIVE_EVENTS + 1])
    active = run.status in RunStatus.active()
    rows = []
    for step in steps:
        end = step.finished_at or (now if step.status in StepStatus.active() else None)
        rows.append(
            {
                "step": step,
                "colour": STATUS_COLOURS.get(step.status, "#6c757d"),
                "percent": max(0, min(100, round(step.progress * 100))),
                "duration": seconds_text((end - step.started_at).total_seconds())
                if step.started_at and end
                else "",
                "so_far": step.finished_at is None and step.started_at is not None and active,
                "estimate": seconds_text(step.eta_seconds),
            }
        )
    current = next((s for s in steps if s.status in (StepStatus.RUNNING, StepStatus.WAITING)), None)
    eta, eta_why = live_eta(run, steps, now)
    end = run.finished_at or (now if active else None)
    return {
        "run": run,
        "active": active,
        "colour": STATUS_COLOURS.get(run.status, "#6c757d"),
        "percent": max(0, min(100, round(run.progress or 0))),
        "current": current,
        "eta": eta,
        "eta_in": seconds_text((eta - now).total_seconds()) if eta else "",
        "eta_why": eta_why,
        "elapsed": seconds_text((end - run.started_at).total_seconds()) if run.started_at and end else "",
        "steps": rows,
        "events": events[:LIVE_EVENTS],
        "events_cut": len(events) > LIVE_EVENTS,
        "can_cancel": can_cancel and active and not run.cancel_requested,
        "refresh_seconds": LIVE_REFRESH_SECONDS,
    }


def run_link(run: Run | None, *, with_progress: bool = True) -> str:
    """A run as a link to its page with its status (and progress while active), for other objects' pages."""
    if run is None:
        return "-"
    progress = f" {run.progress:.0f}%" if with_progress and run.status in RunStatus.active() else ""
    return format_html(
        '<a href="{}">{}</a> {}{}',
        reverse("admin:core_run_change", args=[run.pk]),
        run.title or run.kind,
        status_badge(run.status),
        progress,
    )


@admin.register(Run)
class RunAdmin(CheckedActions, RecordAdmin):
    """Runs, read-only. A run's page opens with its live section (``#run-live``: status, progress bar, ETA, the
    steps with their durations, the newest events, a Cancel button), served on its own at ``<id>/live/`` and
    fetched again every two seconds by ``core/js/refresh.js`` (a same-origin script: the Content-Security-Policy
    allows no inline script) while the run is active; a terminal run's section carries ``data-refresh-final``, so
    the script stops. Cancel is a POST to ``<id>/cancel/`` with the API's permission (``core.cancel_run``) and
    ``workflow.request_cancel``, as ``POST /runs/{id}/cancel``. Below: what the run is about (kind, subject with a
    link to its page, parameters, who started it)."""

    # Nothing on a run is edited by hand, and not even a superuser removes one here: runs are the audit trail of
    # what was done to clusters and deployments, and by whom (their subjects' rows may go; the runs stay).

    change_form_template = "admin/core/run/change_form.html"
    list_display = (
        "title",
        "kind",
        "coloured_status",
        "progress_percent",
        "subject_id",
        "created",
        "finished",
    )
    list_filter = ("status", "kind")
    search_fields = ("id", "title", "kind", "subject_id")
    date_hierarchy = "created_at"
    actions = ("cancel_runs",)
    # The status, progress, timestamps, steps and events are in the live section above the form: shown twice,
    # the static copy would contradict the live one a few seconds after the page opened.
    fields = ("id", "kind", "title", "subject_link", "params", "created_by", "created", "resumed_count")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("created_by", "subject_type")

    def has_cancel_permission(self, request) -> bool:
        return request.user.has_perm("core.cancel_run")

    @admin.display(description="status", ordering="status")
    def coloured_status(self, obj: Run) -> str:
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="progress", ordering="progress")
    def progress_percent(self, obj: Run) -> str:
        return f"{obj.progress:.0f}%"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Run) -> str:
        return _stamp(obj.created_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, obj: Run) -> str:
        return _stamp(obj.finished_at)

    @admin.display(description="subject")
    def subject_link(self, obj: Run) -> str:
        if obj.subject_type is None or not obj.subject_id:
            return "-"
        model = obj.subject_type.model_class()
        label = f"{obj.subject_type.name} {obj.subject_id}"
        if model is None or model not in self.admin_site._registry:
            return label
        url = reverse(
            f"admin:{obj.subject_type.app_label}_{obj.subject_type.model}_change", args=[obj.subject_id]
        )
        return format_html('<a href="{}">{}</a>', url, label)

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request, queryset) -> None:
        cancelled = sum(
            1 for run in queryset.filter(status__in=RunStatus.active()) if workflow.request_cancel(run)
        )
        self.message_user(request, f"Cancel requested for {cancelled} run(s).", messages.SUCCESS)

    # --- the live section and Cancel ---------------------------------------------------------------------------

    def get_urls(self):
        live = self.admin_site.admin_view(self.live_view)
        cancel = self.admin_site.admin_view(self.cancel_view)
        return [
            path("<path:object_id>/live/", live, name="core_run_live"),
            path("<path:object_id>/cancel/", cancel, name="core_run_cancel"),
            *super().get_urls(),
        ]

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        if obj is not None:
            context["live"] = live_run(request, obj, can_cancel=self.has_cancel_permission(request))
            # The run's name without the status its __str__ carries: that status would be stale in a few seconds.
            context["subtitle"] = f"{obj.title or obj.kind} ({obj.kind}, {obj.pk})"
        return super().render_change_form(request, context, add, change, form_url, obj)

    def _viewable(self, request, object_id: str) -> Run:
        run = self.get_object(request, unquote(object_id))
        if run is None:
            raise Http404("no such run")
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return run

    def live_view(self, request, object_id: str):
        """The live section alone (what the page's script fetches)."""
        run = self._viewable(request, object_id)
        context = {"live": live_run(request, run, can_cancel=self.has_cancel_permission(request))}
        # admin_view marks it never-cached: every fetch sees the run as it is now.
        return TemplateResponse(request, "admin/core/run/live.html", context)

    def cancel_view(self, request, object_id: str):
        """The page's Cancel button: ``workflow.request_cancel``, as ``POST /runs/{id}/cancel`` (same permission);
        back to the run's page, which shows the run stopping."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        run = self._viewable(request, object_id)
        if not self.has_cancel_permission(request):
            raise PermissionDenied
        reason = f"cancelled by {request.user.get_username()} from the console"
        if workflow.request_cancel(run, reason=reason):
            self.log_change(request, run, "Cancel requested")
            self.message_user(request, "Cancel requested: the run stops and cleans up.", messages.SUCCESS)
        else:
            run.refresh_from_db(fields=["status"])
            self.message_user(request, f"Run already {run.status}; nothing to cancel.", messages.WARNING)
        return HttpResponseRedirect(reverse("admin:core_run_change", args=[run.pk]))


def _stamp(moment: datetime | None) -> str:
    """A timestamp to the second, in the site's time zone (the admin's default format drops the seconds)."""
    return localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


# --- API tokens ------------------------------------------------------------------------------------------------


class TokenCreateForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username")
    )
    days = forms.FloatField(
        required=False,
        min_value=0,
        help_text="Lifetime in days (0: no expiry); empty: the API_TOKEN_TTL_DAYS default.",
    )


admin.site.unregister(AuthToken)


@admin.register(AuthToken)
class TokenAdmin(CheckedActions, admin.ModelAdmin):
    """API tokens: who holds one, since when, until when. Only a digest is stored, so no page can show a key;
    a superuser creates a token here (its key is shown once, on the answer to the form) and revokes tokens."""

    list_display = ("user", "created", "expiry", "state")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    ordering = ("-created",)
    fields = ("user", "created", "expiry", "state")
    readonly_fields = fields
    actions = ("revoke_tokens",)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "revoke" says what it does
        return actions

    def has_add_permission(self, request) -> bool:
        # A token acts as its user: only a superuser may make one for someone.
        return request.user.is_active and request.user.is_superuser

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="state")
    def state(self, obj: AuthToken) -> str:
        if obj.expiry is None:
            return "active (no expiry)"
        return "expired" if obj.expiry <= timezone.now() else "active"

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke_tokens(self, request, queryset) -> None:
        doomed = list(queryset)
        self.log_deletions(request, doomed)
        revoked, _ = queryset.filter(pk__in=[t.pk for t in doomed]).delete()
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TokenCreateForm(request.POST or None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Create an API token",
            "form": form,
        }
        if request.method == "POST" and form.is_valid():
            days = form.cleaned_data["days"]
            if days is None:
                token, key = tokens.create_token(form.cleaned_data["user"])
            else:
                token, key = tokens.create_token(form.cleaned_data["user"], days=days)
            self.log_addition(request, token, [{"added": {}}])
            context.update(title="API token created", token=token, key=key)
            response = TemplateResponse(request, "admin/knox/authtoken/created.html", context)
            response["Cache-Control"] = "no-store"  # the only copy of the key: never cached
            return response
        return TemplateResponse(request, "admin/knox/authtoken/add.html", context)


@admin.register(Event)
class EventAdmin(RecordAdmin):
    """The event outbox, read-only: what ``GET /events`` and the webhooks deliver."""

    list_display = ("position", "time", "type", "subject")
    list_filter = ("type",)
    search_fields = ("subject", "type")
    ordering = ("-seq",)
    fields = ("id", "position", "time", "type", "source", "subject", "data")
    readonly_fields = fields
