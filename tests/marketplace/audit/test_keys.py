"""The signing key: generated on the embedded default, required in production, rotated with its
old public key kept; periodic sequencing and checkpoints."""

from __future__ import annotations

import datetime as dt
import stat

import pytest

from marketplace import create_app
from marketplace.audit import journal, periodic_run, services
from marketplace.audit.keys import AuditKeyStore, open_key_store, write_private_key
from marketplace.audit.notes import NoteError, Signer, VerifierKey, open_note
from marketplace.config import ConfigError
from marketplace.db import utcnow
from tests.marketplace.audit.conftest import records


def test_the_embedded_default_generates_a_private_key_in_the_instance_folder(app):
    store = app.extensions["audit_keys"]
    path = store.path
    assert path.parent == __import__("pathlib").Path(app.instance_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("PRIVATE+KEY+" + store.origin + "+")
    assert store.verifier() == Signer.parse(path.read_text()).verifier()
    # A second app on the same instance folder keeps the same key.
    again = AuditKeyStore(path, store.origin, generate=True)
    assert again.verifier() == store.verifier()


def test_production_refuses_to_start_without_its_signing_key(tmp_path, scratch_databases):
    url, engine = scratch_databases.create("sqlite")  # migrated, as production requires
    config = {
        "ENV": "production",
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "SECRET_KEY": "s" * 40,
        "DATABASE_URL": url,
        "PAYMENTS": "stripe",
        "STRIPE_API_KEY": "sk_live_not_used_here",
        "STRIPE_WEBHOOK_SECRET": "whsec_not_used_here",
        "AUDIT_ORIGIN": "jishi.example/log",
    }
    with pytest.raises(ConfigError, match="MARKETPLACE_AUDIT_KEY_PATH is unset"):
        create_app(config)
    engine.dispose()
    assert not list((tmp_path / "instance").glob("*.key"))  # production never makes one up

    # The refusals themselves, where the key store is opened.
    def production(key_path: str):
        return open_key_store(
            key_path=key_path,
            origin="jishi.example/log",
            instance_path=tmp_path / "instance",
            development=False,
        )

    with pytest.raises(ConfigError, match="MARKETPLACE_AUDIT_KEY_PATH is unset"):
        production("")
    with pytest.raises(ConfigError, match="no journal signing key"):
        production(str(tmp_path / "missing.key"))
    assert not (tmp_path / "missing.key").exists()  # production never makes one up
    wrong = tmp_path / "wrong.key"
    write_private_key(wrong, Signer.generate("other.example/log"))
    with pytest.raises(ConfigError, match="rotate the key"):
        production(str(wrong))
    broken = tmp_path / "broken.key"
    broken.write_text("PRIVATE+KEY+jishi.example/log+00000000+AAAA\n")
    with pytest.raises(ConfigError, match=r"broken\.key"):
        production(str(broken))
    good = tmp_path / "good.key"
    write_private_key(good, signer := Signer.generate("jishi.example/log"))
    assert production(str(good)).verifier() == signer.verifier()
    # The origin names the key, so it must be a valid key name: checked by the app factory.
    with pytest.raises(ConfigError, match="MARKETPLACE_AUDIT_ORIGIN"):
        create_app(
            {
                "ENV": "testing",
                "INSTANCE_PATH": str(tmp_path / "instance"),
                "DATABASE_URL": f"sqlite:///{tmp_path / 'none.sqlite3'}",
                "AUDIT_ORIGIN": "has space",
            }
        )


def test_rotation_keeps_old_public_keys_published_and_old_notes_verifying(app, db_session, runner):
    store = app.extensions["audit_keys"]
    journal.append(db_session, kind="test.event", subject={"n": 1})
    db_session.commit()
    first = runner.invoke(args=["audit", "checkpoint"])
    assert first.exit_code == 0, first.output
    old = store.verifier()
    assert open_note(first.output, [old]).verified_by == (old,)

    rotated = runner.invoke(args=["audit", "rotate-key"])
    assert rotated.exit_code == 0, rotated.output
    new = store.verifier()
    assert new != old and f"retired: {old.encode()}" in rotated.output
    listed = store.public_keys(db_session)
    assert [k.verifier_key for k in listed] == [old.encode(), new.encode()]
    assert listed[0].valid_to is not None and not listed[0].current
    assert listed[1].valid_to is None and listed[1].current
    assert all(VerifierKey.parse(k.verifier_key).name == store.origin for k in listed)

    journal.append(db_session, kind="test.event", subject={"n": 2})
    db_session.commit()
    second = runner.invoke(args=["audit", "checkpoint"])
    assert open_note(second.output, [new]).text.split("\n")[1] == "2"
    with pytest.raises(NoteError):
        open_note(second.output, [old])
    # The checkpoint made before the rotation is still the one stored, and still verifies.
    assert open_note(services.checkpoint_at(db_session, store, 1).note, [old])


def test_the_key_file_is_reread_when_it_changes(tmp_path):
    path = tmp_path / "audit.key"
    store = AuditKeyStore(path, "jishi.test/log", generate=True)
    before = store.verifier()
    replacement = Signer.generate("jishi.test/log")
    write_private_key(path, replacement)
    assert store.verifier() == replacement.verifier() != before


def test_generate_key_needs_no_app_and_never_overwrites(tmp_path, runner):
    out = tmp_path / "operator.key"
    done = runner.invoke(args=["audit", "generate-key", "--out", str(out), "--origin", "a.test/j"])
    assert done.exit_code == 0, done.output
    signer = Signer.parse(out.read_text())
    assert f"verifier key: {signer.verifier().encode()}" in done.output
    again = runner.invoke(args=["audit", "generate-key", "--out", str(out)])
    assert again.exit_code != 0 and "never overwritten" in again.output
    assert Signer.parse(out.read_text()).verifier() == signer.verifier()


def test_periodic_work_sequences_and_checkpoints_every_n_records_or_t_seconds(app, db_session):
    settings = app.extensions["settings"]
    settings.audit_checkpoint_interval_records = 3
    settings.audit_checkpoint_interval_s = 3600
    for n in range(4):
        journal.append(db_session, kind="test.event", subject={"n": n})
    db_session.commit()
    periodic_run(app)
    assert services.tree_size(db_session) == 4
    assert services.latest_checkpoint(db_session).size == 4
    journal.append(db_session, kind="test.event", subject={"n": 4})
    db_session.commit()
    periodic_run(app)
    assert services.tree_size(db_session) == 5
    assert services.latest_checkpoint(db_session).size == 4  # neither N records nor T seconds
    assert services.checkpoint_due(
        db_session,
        interval_records=3,
        interval_s=60,
        now=utcnow() + dt.timedelta(seconds=61),
    )
    settings.audit_checkpoint_interval_s = 0
    periodic_run(app)
    assert services.latest_checkpoint(db_session).size == 5
    periodic_run(app)  # nothing new: no new checkpoint
    assert services.latest_checkpoint(db_session).size == 5
    assert [r["subject"]["n"] for r in records(db_session)] == [0, 1, 2, 3, 4]
    from marketplace import periodic

    assert "audit.sequence" in [t.name for t in periodic.registered(app)]
