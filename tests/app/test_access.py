"""Access control: off by default, a shared team password or an OIDC login (st.login) when configured."""

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


OIDC = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "studio",
    "client_secret": "s",
    "server_metadata_url": "https://login.example.com/.well-known/openid-configuration",
}


def test_login_gate_shows_only_the_login_button_until_signed_in(app):
    app.secrets["auth"] = OIDC
    app.user = {"is_logged_in": False}
    app.run()
    assert not app.exception
    assert [b.label for b in app.button] == ["Log in"]
    assert not app.metric and not app.text_input  # nothing of the app before login


def test_a_signed_in_user_is_named_by_their_login(app):
    app.secrets["auth"] = OIDC
    app.user = {"is_logged_in": True, "email": "ana@example.com", "name": "Ana"}
    app.run()
    assert not app.exception
    assert [m.label for m in app.metric] == ["Samples"]  # the Home page
    assert any("Signed in as **ana@example.com**" in c.value for c in app.sidebar.caption)
    assert "Log out" in [b.label for b in app.sidebar.button]
    assert not [t for t in app.sidebar.text_input if t.label == "Your name"]  # the login names the samples
