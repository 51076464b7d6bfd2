"""Access control: off by default, a shared team password when configured."""

from __future__ import annotations


def test_no_password_configured_means_open_app(app):
    app.run()
    assert not app.exception
    assert app.title[0].value == "Facial Expression Studio"
    assert not [t for t in app.text_input if t.label == "Team password"]


def test_team_password_gate(app, workspace):
    app.secrets["team_password"] = "s3cret-team"
    app.run()
    assert [t.label for t in app.text_input] == ["Team password"]
    assert not app.metric  # nothing of the app is shown before the password

    app.text_input[0].input("wrong")
    app.button[0].click()
    app.run()
    assert any("not the team password" in e.value for e in app.error)
    assert not app.metric

    app.text_input[0].input("s3cret-team")
    app.button[0].click()
    app.run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["Samples"]  # the Home page
