"""A kubeconfig ``proxy-url`` is refused at validation: the gateway connects to the API server directly, pinned to
the address it checked, so a proxy would be ignored (and honouring it would route credentials through a host the
guard cannot pin)."""

from __future__ import annotations

import pytest

from clusters import services
from clusters.kubeconfig import KubeconfigError, validate_kubeconfig
from tests.kubeconfig.test_validate import base_config, dump


@pytest.mark.parametrize(
    "proxy", ["http://proxy.example.com:3128", "https://proxy.example.com", "socks5://10.0.0.5:1080"]
)
def test_a_proxy_url_is_refused_with_the_reason(proxy):
    raw = dump(base_config(**{"proxy-url": proxy}))
    with pytest.raises(KubeconfigError) as caught:
        validate_kubeconfig(raw)
    message = str(caught.value)
    assert "cluster 'prod-cluster' sets proxy-url, which is not supported" in message
    assert "connects to the API server directly" in message
    assert "very-secret-token-value" not in message


def test_registration_refuses_a_proxy_url_with_the_invalid_kubeconfig_code():
    raw = dump(base_config(**{"proxy-url": "http://proxy.example.com:3128"})).encode()
    with pytest.raises(services.RegistrationRefused) as caught:
        services.validate(raw)
    assert caught.value.code == services.RegistrationRefused.Code.KUBECONFIG_INVALID
    assert "proxy-url" in str(caught.value)


def test_a_proxy_at_a_metadata_address_is_still_named_as_such():
    raw = dump(base_config(**{"proxy-url": "http://[fd00:ec2::23]"}))
    with pytest.raises(KubeconfigError, match=r"proxy-url host .* is a cloud metadata endpoint"):
        validate_kubeconfig(raw)


def test_a_kubeconfig_without_proxy_is_still_accepted():
    assert validate_kubeconfig(dump(base_config())).server == "https://k8s.example.com:6443"
