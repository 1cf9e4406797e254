"""Encrypted model fields and the key commands, against a throwaway model with its own table.

The model is registered in the ``core`` app only for the duration of each test (its table is created and
dropped around it and it is removed from the app registry afterwards), so ``rotate_keys``' model discovery
sees it exactly as it sees real models, and no other test ever does.
"""

from __future__ import annotations

import io
import stat

import pytest
from django.apps import apps
from django.core.exceptions import FieldError
from django.core.management import CommandError, call_command
from django.db import connection, models
from django.forms import modelform_factory

from core import crypto
from core.crypto import CryptoError
from core.fields import (
    Ciphertext,
    EncryptedJSONField,
    EncryptedTextField,
    describe,
    describe_stored,
    raw_token,
)

SECRET = "client-key-data: the-plaintext-secret"
MODEL_NAME = "cryptotestsecret"


@pytest.fixture
def Secret(transactional_db, sym_key):  # a model class, hence the capital
    class CryptoTestSecret(models.Model):
        name = models.CharField(max_length=50)
        text = EncryptedTextField(null=True, blank=True, context="tests.CryptoTestSecret.text")
        data = EncryptedJSONField(null=True, blank=True)

        class Meta:
            app_label = "core"

        def __str__(self) -> str:
            return self.name

    with connection.schema_editor() as editor:
        editor.create_model(CryptoTestSecret)
    try:
        yield CryptoTestSecret
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(CryptoTestSecret)
        apps.all_models["core"].pop(MODEL_NAME, None)
        apps.clear_cache()


def raw_columns(model, pk) -> tuple[str | None, str | None]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT text, data FROM {model._meta.db_table} WHERE id = %s", [pk])  # noqa: S608
        return cursor.fetchone()


def test_round_trip_and_the_column_holds_ciphertext_only(Secret):
    obj = Secret.objects.create(name="a", text=SECRET, data={"token": "tok-123", "n": [1, 2]})
    text_raw, data_raw = raw_columns(Secret, obj.pk)
    assert crypto.is_token(text_raw) and crypto.is_token(data_raw)
    assert "plaintext-secret" not in text_raw and "tok-123" not in data_raw
    fresh = Secret.objects.get(pk=obj.pk)
    assert fresh.text == SECRET
    assert fresh.data == {"token": "tok-123", "n": [1, 2]}
    assert Secret.objects.values_list("text", flat=True).get(pk=obj.pk) == SECRET


def test_null_stays_null(Secret):
    obj = Secret.objects.create(name="empty")
    assert raw_columns(Secret, obj.pk) == (None, None)
    assert Secret.objects.get(pk=obj.pk).text is None
    assert Secret.objects.filter(text__isnull=True).count() == 1
    assert Secret.objects.filter(text=None).count() == 1


@pytest.mark.parametrize(
    "lookup", ["text", "text__contains", "text__startswith", "data__icontains", "text__in"]
)
def test_lookups_other_than_isnull_are_refused(Secret, lookup):
    value = ["x"] if lookup.endswith("__in") else "x"
    with pytest.raises(FieldError, match="can only be filtered with isnull"):
        list(Secret.objects.filter(**{lookup: value}))


def test_a_valid_token_is_not_encrypted_twice(Secret):
    obj = Secret.objects.create(name="a", text=SECRET)
    token, _ = raw_columns(Secret, obj.pk)
    other = Secret.objects.create(name="b", text=token)  # e.g. loaddata of a dump
    assert raw_columns(Secret, other.pk)[0] == token
    assert Secret.objects.get(pk=other.pk).text == SECRET
    Secret.objects.filter(pk=other.pk).update(
        text=Ciphertext(crypto.encrypt("x", context=Secret._meta.get_field("text").context))
    )
    assert Secret.objects.get(pk=other.pk).text == "x"


def test_a_token_of_another_column_is_treated_as_data(Secret):
    # With context binding, a token lifted from another column does not verify here, so it is encrypted as text.
    foreign = crypto.encrypt("foreign", context="elsewhere")
    obj = Secret.objects.create(name="a", text=foreign)
    assert Secret.objects.get(pk=obj.pk).text == foreign


def test_wrong_key_fails_loudly_when_loading(Secret, key_dir):
    obj = Secret.objects.create(name="a", text=SECRET)
    (key_dir / "symmetric-key-256").write_bytes(crypto.generate_symmetric_key())
    with pytest.raises(CryptoError) as info:
        Secret.objects.get(pk=obj.pk)
    assert "not in the keyring" in str(info.value)
    assert "plaintext-secret" not in str(info.value)


def test_forms_leave_the_field_out_and_describe_shows_only_the_key_id(Secret):
    form_class = modelform_factory(Secret, fields="__all__")
    assert set(form_class.base_fields) == {"name"}
    obj = Secret.objects.create(name="a", text=SECRET)
    summary = describe_stored(obj, "text")
    assert summary == f"encrypted (key id {crypto.current_key_id()})"
    assert Secret._meta.get_field("text").describe(obj) == summary
    assert describe_stored(Secret.objects.create(name="n"), "text") == "not set"
    assert describe(None) == "not set"


def test_dumpdata_style_serialisation_carries_tokens(Secret):
    obj = Secret.objects.create(name="a", text=SECRET)
    value = Secret._meta.get_field("text").value_to_string(obj)
    assert crypto.is_token(value) and "plaintext-secret" not in value


def test_deconstruct_keeps_the_context():
    field = EncryptedTextField(context="clusters.Cluster.kubeconfig")
    _, path, _, kwargs = field.deconstruct()
    assert path == "core.fields.EncryptedTextField"
    assert kwargs["context"] == "clusters.Cluster.kubeconfig"
    with pytest.raises(TypeError, match="cannot be unique"):
        EncryptedTextField(unique=True)


# --- rotate_keys --------------------------------------------------------------------------------------------


def rotate(*args: str) -> str:
    out = io.StringIO()
    call_command("rotate_keys", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def key_ids(model) -> set[str]:
    tokens = model.objects.annotate(t1=raw_token("text"), t2=raw_token("data")).values_list("t1", "t2")
    return {crypto.token_key_id(t) for pair in tokens for t in pair if t is not None}


def test_rotate_keys_reencrypts_everything_and_keeps_it_readable(Secret, key_dir):
    for i in range(7):
        Secret.objects.create(name=f"s{i}", text=f"{SECRET}-{i}", data={"i": i})
    Secret.objects.create(name="null")
    old = crypto.current_key_id()

    assert "total: 14 value(s)" in rotate("--dry-run")
    assert crypto.current_key_id() == old  # a dry run changes nothing

    output = rotate("--batch-size", "3")
    new = crypto.current_key_id()
    assert new != old
    assert "re-encrypted 14 value(s)" in output
    assert key_ids(Secret) == {new}
    assert (key_dir / "retired" / f"{old}.key").exists()
    assert [o.text for o in Secret.objects.order_by("pk")][:7] == [f"{SECRET}-{i}" for i in range(7)]
    assert Secret.objects.get(name="s3").data == {"i": 3}
    assert Secret.objects.get(name="null").text is None

    # Old key gone after rotation: data is still readable because nothing uses it any more.
    (key_dir / "retired" / f"{old}.key").unlink()
    assert {o.text for o in Secret.objects.exclude(name="null")} == {f"{SECRET}-{i}" for i in range(7)}


def test_rotate_keys_resumes_an_interrupted_rotation(Secret):
    for i in range(5):
        Secret.objects.create(name=f"s{i}", text=f"v{i}")
    # An interrupted run: the new key is installed, but only one value was re-encrypted.
    crypto.install_new_key()
    current = crypto.current_key_id()
    first = Secret.objects.get(name="s0")
    first.save()  # written under the current key
    assert len(key_ids(Secret)) == 2

    assert "would finish the previous rotation" in rotate("--dry-run")
    output = rotate()
    assert "finishing the previous rotation" in output
    assert crypto.current_key_id() == current  # no extra key
    assert key_ids(Secret) == {current}
    assert sorted(o.text for o in Secret.objects.all()) == [f"v{i}" for i in range(5)]


def test_rotate_keys_does_not_overwrite_a_concurrent_write(Secret, monkeypatch):
    a = Secret.objects.create(name="a", text="old-a")
    Secret.objects.create(name="b", text="old-b")
    real_reencrypt = crypto.reencrypt

    def reencrypt_while_app_writes(token, *, context=None):
        # Between the command reading row "a" and writing it back, the application saves a new value.
        if Secret.objects.filter(pk=a.pk, name="a").exists():
            Secret.objects.filter(pk=a.pk).update(name="a2", text="new-a")
        return real_reencrypt(token, context=context)

    monkeypatch.setattr(crypto, "reencrypt", reencrypt_while_app_writes)
    rotate()
    assert Secret.objects.get(pk=a.pk).text == "new-a"
    assert Secret.objects.get(name="b").text == "old-b"
    assert key_ids(Secret) == {crypto.current_key_id()}


def test_rotate_keys_reports_a_value_it_cannot_decrypt(Secret, key_dir):
    obj = Secret.objects.create(name="a", text=SECRET)
    crypto.install_new_key()
    for f in (key_dir / "retired").glob("*.key"):
        f.unlink()  # the key of the stored value is lost
    with pytest.raises(CommandError, match=rf"CryptoTestSecret.text pk={obj.pk}: .* not in the keyring"):
        rotate()


# --- generate_keys ------------------------------------------------------------------------------------------


def generate(*args: str) -> str:
    out = io.StringIO()
    call_command("generate_keys", *args, stdout=out)
    return out.getvalue()


def test_generate_keys_writes_both_files_0600_and_refuses_to_overwrite(key_dir):
    output = generate()
    rsa_path, sym_path = key_dir / "rsa-private-key.pem", key_dir / "symmetric-key-256"
    assert f"wrote RSA-4096 private key to {rsa_path}" in output
    assert len(sym_path.read_bytes()) == 32
    assert f"key id {crypto.current_key_id()}" in output
    for path in (rsa_path, sym_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert crypto.public_key_pem().startswith("-----BEGIN PUBLIC KEY-----")
    assert crypto.load_keyring().keys  # usable as is

    before = sym_path.read_bytes()
    with pytest.raises(CommandError, match="refusing to overwrite"):
        generate()
    assert sym_path.read_bytes() == before
    assert "kept existing" in generate("--if-missing")
    assert sym_path.read_bytes() == before


def test_generate_keys_force_keeps_the_old_symmetric_key_retired(key_dir):
    generate("--rsa-bits", "2048")
    token = crypto.encrypt(SECRET)
    old_id = crypto.current_key_id()
    output = generate("--force", "--rsa-bits", "2048")
    assert f"kept the previous symmetric key {old_id}" in output
    assert crypto.current_key_id() != old_id
    assert crypto.decrypt(token) == SECRET


def test_generate_keys_if_missing_fills_in_only_the_absent_file(key_dir, rsa_pem):
    key_dir.mkdir(parents=True)
    (key_dir / "rsa-private-key.pem").write_bytes(rsa_pem)  # e.g. made with openssl earlier
    output = generate("--if-missing")
    assert (key_dir / "rsa-private-key.pem").read_bytes() == rsa_pem
    assert "wrote 256-bit symmetric key" in output and "RSA" not in output.split("kept existing")[0]
