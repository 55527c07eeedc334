"""Session tokens: carriers, expiry, suspension, logout, and the throttled last_used write."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from tests.fixtures import PASSWORD, APIClient, token_for

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def me(token: str | None = None, **headers: str):
    return APIClient(token).get("users/me", headers=headers)


def test_it_accepts_the_header_the_bearer_and_the_cookie(owner, anon_api):
    r = anon_api.post("users/login", {"email": "owner@example.com", "password": PASSWORD})
    assert r.status_code == 201
    token = r.json()["session_token"]
    cookie = r.cookies["coder_session_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax"

    assert me(token).json()["username"] == "owner"
    assert me(Authorization=f"Bearer {token}").json()["username"] == "owner"
    client = APIClient()
    client._client.cookies["coder_session_token"] = token
    assert client.get("users/me").json()["username"] == "owner"


@pytest.mark.parametrize(
    "token", ["garbage", "-", "abcdefghij-", "abcdefghij-wrongsecret", "x" * 500, "abc-def-ghi"]
)
def test_it_refuses_unknown_and_malformed_tokens_with_401(owner, token):
    r = me(token)
    assert r.status_code == 401
    assert set(r.json()) == {"message", "detail", "validations"}


def test_it_refuses_a_token_with_a_right_id_and_a_wrong_secret(owner):
    token = token_for(owner)
    key_id = token.split("-", 1)[0]
    assert me(f"{key_id}-{'A' * 22}").status_code == 401
    assert me(token).status_code == 200


def test_it_refuses_wrong_passwords_and_suspended_users_at_login(owner, member, anon_api):
    from coderd.users.services import suspend_user

    assert (
        anon_api.post("users/login", {"email": "member@example.com", "password": "nope"}).status_code == 401
    )
    assert (
        anon_api.post("users/login", {"email": "ghost@example.com", "password": PASSWORD}).status_code == 401
    )
    suspend_user(owner, member)
    r = anon_api.post("users/login", {"email": "member@example.com", "password": PASSWORD})
    assert r.status_code == 401
    assert "suspended" in r.json()["message"]


def test_it_refuses_an_expired_token(owner):
    from coderd.users.services import issue_api_key

    with time_machine.travel(T0, tick=False) as clock:
        _key, token = issue_api_key(owner, "token", lifetime_seconds=3600)
        assert me(token).status_code == 200
        clock.move_to(T0 + timedelta(seconds=3599))
        assert me(token).status_code == 200
        clock.move_to(T0 + timedelta(seconds=3600))
        assert me(token).status_code == 401


def test_it_refuses_the_tokens_of_a_suspended_user_until_activated(owner, member, api_as):
    token = token_for(member)
    assert me(token).status_code == 200
    admin = api_as(owner)
    assert admin.put("users/member/status/suspend").json()["status"] == "suspended"
    assert me(token).status_code == 401
    assert admin.put("users/member/status/activate").json()["status"] == "active"
    assert me(token).status_code == 200


def test_it_revokes_every_token_of_a_deleted_user(owner, member, api_as):
    token = token_for(member)
    assert api_as(owner).delete("users/member").status_code == 200
    assert me(token).status_code == 401


def test_it_ends_the_session_at_logout(owner, anon_api):
    token = anon_api.post("users/login", {"email": "owner@example.com", "password": PASSWORD}).json()[
        "session_token"
    ]
    client = APIClient(token)
    r = client.post("users/logout")
    assert r.status_code == 200
    assert r.cookies["coder_session_token"].value == ""
    assert me(token).status_code == 401


def test_it_gives_sessions_and_tokens_their_lifetimes(owner, settings):
    from coderd.users.models import APIKey

    with time_machine.travel(T0, tick=False):
        client = APIClient(token_for(owner))
        session = client.post("users/me/keys").json()["key"]
        token = client.post("users/me/keys/tokens", {"lifetime": 7200 * 10**9, "token_name": "ci"}).json()[
            "key"
        ]
        default = client.post("users/me/keys/tokens", {}).json()["key"]
    key = APIKey.objects.get(pk=session.split("-")[0])
    assert key.login_type == "password"
    assert key.expires_at == T0 + timedelta(seconds=settings.SESSION_DURATION)
    key = APIKey.objects.get(pk=token.split("-")[0])
    assert (key.login_type, key.token_name, key.expires_at) == ("token", "ci", T0 + timedelta(hours=2))
    assert APIKey.objects.get(pk=default.split("-")[0]).expires_at == T0 + timedelta(
        seconds=settings.MAX_TOKEN_LIFETIME
    )
    too_long = int(settings.MAX_TOKEN_LIFETIME + 1) * 10**9
    r = client.post("users/me/keys/tokens", {"lifetime": too_long})
    assert r.status_code == 400 and r.json()["validations"][0]["field"] == "lifetime"
    with time_machine.travel(T0, tick=False):
        # One nanosecond, rounded up to the second a token lives at least; 0 is Coder's "not given".
        short = client.post("users/me/keys/tokens", {"lifetime": 1}).json()["key"]
        zero = client.post("users/me/keys/tokens", {"lifetime": 0}).json()["key"]
    assert APIKey.objects.get(pk=short.split("-")[0]).expires_at == T0 + timedelta(seconds=1)
    assert APIKey.objects.get(pk=zero.split("-")[0]).expires_at == T0 + timedelta(
        seconds=settings.MAX_TOKEN_LIFETIME
    )


def test_it_refuses_a_second_token_of_the_same_name(owner, member):
    from coderd.users.models import APIKey

    client = APIClient(token_for(owner))
    assert client.post("users/me/keys/tokens", {"token_name": "ci"}).status_code == 201
    r = client.post("users/me/keys/tokens", {"token_name": "ci"})
    assert r.status_code == 409
    assert r.json()["message"] == "A token named 'ci' already exists."
    # Another user's token may have the name; unnamed tokens are not compared.
    assert APIClient(token_for(member)).post("users/me/keys/tokens", {"token_name": "ci"}).status_code == 201
    assert client.post("users/me/keys/tokens", {}).status_code == 201
    assert client.post("users/me/keys/tokens", {}).status_code == 201
    assert APIKey.objects.filter(token_name="ci").count() == 2


def test_it_stores_only_a_hash_of_the_secret(owner):
    from coderd.users.models import APIKey

    token = token_for(owner)
    key_id, secret = token.split("-", 1)
    stored = APIKey.objects.get(pk=key_id)
    assert secret.encode() not in bytes(stored.hashed_secret)
    assert len(bytes(stored.hashed_secret)) == 32


def test_it_writes_last_used_at_most_once_per_interval(owner, settings, django_assert_num_queries):
    from coderd.users.models import APIKey, User
    from coderd.users.services import issue_api_key, user_for_token

    interval = settings.API_KEY_LAST_USED_WRITE_INTERVAL
    with time_machine.travel(T0, tick=False):
        key, token = issue_api_key(owner, "token")

    def last_used() -> datetime:
        return APIKey.objects.get(pk=key.pk).last_used

    # Within the interval: one read, no write.
    with django_assert_num_queries(1):
        assert user_for_token(token, T0 + timedelta(seconds=interval - 1)) == owner
    assert last_used() == T0
    # Past it: the key and the user are written once ...
    later = T0 + timedelta(seconds=interval)
    with django_assert_num_queries(3):
        user_for_token(token, later)
    assert last_used() == later
    assert User.objects.get(pk=owner.pk).last_seen_at == later
    # ... and not again until another interval has passed.
    with django_assert_num_queries(1):
        user_for_token(token, later + timedelta(seconds=interval - 1))
    assert last_used() == later


def test_it_writes_last_used_once_when_two_requests_race(owner, settings, monkeypatch):
    from coderd.users import services
    from coderd.users.models import APIKey

    interval = timedelta(seconds=settings.API_KEY_LAST_USED_WRITE_INTERVAL)
    with time_machine.travel(T0, tick=False):
        key, token = services.issue_api_key(owner, "token")
    # Request B reads the key (last_used = T0); before it writes, request A runs all the way and
    # writes. B's conditional UPDATE must then match no row, though B's own check said "stale".
    real_compare = services.hmac.compare_digest
    interleaved: list[bool] = []

    def compare_then_let_a_run(a: bytes, b: bytes) -> bool:
        if not interleaved:
            interleaved.append(True)
            services.api_key_for_token(token, T0 + interval)  # request A
        return real_compare(a, b)

    monkeypatch.setattr(services.hmac, "compare_digest", compare_then_let_a_run)
    b = services.api_key_for_token(token, T0 + interval + timedelta(seconds=1))  # request B
    assert b is not None and interleaved
    assert APIKey.objects.get(pk=key.pk).last_used == T0 + interval


def test_it_throttles_last_used_through_the_api(owner):
    from coderd.users.models import APIKey, User

    with time_machine.travel(T0, tick=False) as clock:
        token = token_for(owner)
        key_id = token.split("-")[0]
        for seconds in (5, 30, 59):
            clock.move_to(T0 + timedelta(seconds=seconds))
            assert me(token).status_code == 200
        assert APIKey.objects.get(pk=key_id).last_used == T0
        clock.move_to(T0 + timedelta(seconds=61))
        assert me(token).status_code == 200
        assert APIKey.objects.get(pk=key_id).last_used == T0 + timedelta(seconds=61)
        assert User.objects.get(pk=owner.pk).last_seen_at == T0 + timedelta(seconds=61)


def test_it_wakes_a_dormant_user_who_uses_a_token(owner, member, settings):
    from coderd.users.models import User, UserStatus

    with time_machine.travel(T0, tick=False) as clock:
        token = token_for(member)
        User.objects.filter(pk=member.pk).update(status=UserStatus.DORMANT)
        clock.move_to(T0 + timedelta(seconds=settings.API_KEY_LAST_USED_WRITE_INTERVAL))
        assert me(token).status_code == 200
    assert User.objects.get(pk=member.pk).status == UserStatus.ACTIVE
