"""Configuration: precedence of the sources, type coercion, validation errors naming the key,
namespaces and their lookup. ``load_config`` is pure, so these tests need no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushgate.config import Config, NamespaceConfig, load_config
from pushgate.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pushgate.toml"
    path.write_text(text)
    return path


def test_defaults_without_any_source() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.port == 8080 and cfg.broker == "memory://" and not cfg.jwt_enabled


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    path = toml(tmp_path, 'port = 1111\nhistory_size = 7\nredis_prefix = "toml"\nlog_level = "debug"\n')
    env = {"PUSHGATE_PORT": "2222", "PUSHGATE_REDIS_PREFIX": "env"}
    cli = {"port": "3333", "redis_prefix": None}  # an unset flag (None) lets lower layers show through

    cfg = load_config(file=path, env=env, cli=cli)

    assert cfg.port == 3333  # CLI beats env and TOML
    assert cfg.redis_prefix == "env"  # env beats TOML
    assert cfg.history_size == 7  # TOML beats default
    assert cfg.log_level == "debug"
    assert cfg.max_connections == 0  # default


def test_config_file_from_env_variable(tmp_path: Path) -> None:
    path = toml(tmp_path, "max_subscriptions = 9\n")
    assert load_config(env={"PUSHGATE_CONFIG": str(path)}).max_subscriptions == 9


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("client_publish", "true", True),
        ("client_publish", "Yes", True),
        ("client_publish", "on", True),
        ("client_publish", "0", False),
        ("client_publish", "off", False),
        ("max_connections", "42", 42),
        ("ping_interval", "0.5", 0.5),
        ("ping_interval", "3", 3.0),
        ("allowed_origins", "https://a.example, https://*.b.example,", ("https://a.example", "https://*.b.example")),
        ("jwt_audience", "", None),  # empty string clears an optional setting
    ],
)
def test_env_strings_are_coerced(key: str, raw: str, expected: object) -> None:
    cfg = load_config(env={f"PUSHGATE_{key.upper()}": raw})
    value = getattr(cfg, key)
    assert value == expected and type(value) is type(expected)


def test_toml_native_types_are_accepted(tmp_path: Path) -> None:
    path = toml(
        tmp_path,
        'allowed_origins = ["https://app.example.com", "https://*.example.org"]\n'
        "client_publish = false\nhistory_ttl = 12\nmax_message_size = 1024\n",
    )
    cfg = load_config(file=path, env={})
    assert cfg.allowed_origins == ("https://app.example.com", "https://*.example.org")
    assert cfg.client_publish is False
    assert cfg.history_ttl == 12.0 and isinstance(cfg.history_ttl, float)
    assert cfg.max_message_size == 1024


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("port", "notanumber"),
        ("port", "99999"),
        ("max_connections", "1.5"),
        ("ping_interval", "fast"),
        ("ping_interval", "0"),
        ("client_publish", "maybe"),
        ("drain_period", "-1"),
        ("log_level", "loud"),
        ("broker", "kafka://x"),
    ],
)
def test_bad_env_value_names_the_key(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={f"PUSHGATE_{key.upper()}": raw})
    assert info.value.key == key
    assert key in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("prot = 8080\n", "prot"),
        ("port = true\n", "port"),
        ("max_message_size = 1.5\n", "max_message_size"),
        ("allowed_origins = [1, 2]\n", "allowed_origins"),
        ("jwt_secret = 5\n", "jwt_secret"),
    ],
)
def test_bad_toml_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file=toml(tmp_path, text), env={})
    assert info.value.key == key


def test_unreadable_or_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file=tmp_path / "missing.toml", env={})
    assert info.value.key == "config"
    with pytest.raises(ConfigError) as info:
        load_config(file=toml(tmp_path, "port = = 1\n"), env={})
    assert info.value.key == "config"


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={"jwt_secret": "s", "jwt_public_key": "k.pem"})
    assert info.value.key == "jwt_secret"
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={"workers": "2"})  # memory broker cannot be shared
    assert info.value.key == "workers"
    assert load_config(env={}, cli={"workers": "2", "broker": "redis://localhost:6379/0"}).workers == 2


NAMESPACES = """
[namespaces.default]
history_size = 3

[namespaces.chat]
publish = true
join_leave = true
history_size = 10
history_ttl = 60

[namespaces.private]
subscribe = "authenticated"
presence = false
"""


def test_namespaces_are_parsed(tmp_path: Path) -> None:
    cfg = load_config(file=toml(tmp_path, NAMESPACES), env={})
    assert cfg.namespaces["chat"] == NamespaceConfig(publish=True, join_leave=True, history_size=10,
                                                    history_ttl=60)
    assert cfg.namespaces["private"] == NamespaceConfig(subscribe="authenticated", presence=False)


def test_namespace_lookup_by_channel_prefix(tmp_path: Path) -> None:
    cfg = load_config(file=toml(tmp_path, NAMESPACES), env={})
    assert cfg.namespace("chat:room1") is cfg.namespaces["chat"]
    assert cfg.namespace("chat:room1:thread:2") is cfg.namespaces["chat"]  # only the first ':' counts
    assert cfg.namespace("news") is cfg.namespaces["default"]
    assert cfg.namespace("unknown:x") is cfg.namespaces["default"]  # unknown namespace → default
    assert cfg.history_for("chat:room1") == (10, 60.0)
    assert cfg.history_for("news") == (3, cfg.history_ttl)  # ttl falls back to the server-wide one
    # with JWT off, publish follows the namespace, else dev mode allows it
    assert cfg.client_may_publish("chat:room1") and cfg.client_may_publish("news")


def test_namespace_lookup_without_a_default_namespace() -> None:
    cfg = load_config(env={})
    assert cfg.namespace("news") == NamespaceConfig()
    assert cfg.namespace("chat:room1") == NamespaceConfig()


def test_client_publish_default_depends_on_jwt_mode(tmp_path: Path) -> None:
    path = toml(tmp_path, NAMESPACES)
    jwt = load_config(file=path, env={}, cli={"jwt_secret": "s"})
    assert not jwt.client_may_publish("news")  # JWT mode refuses by default
    assert jwt.client_may_publish("chat:room1")  # the namespace allows it
    opened = load_config(file=path, env={}, cli={"jwt_secret": "s", "client_publish": "true"})
    assert opened.client_may_publish("news")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[namespaces.chat]\npublsh = true\n", "namespaces.chat.publsh"),
        ('[namespaces.chat]\nsubscribe = "users"\n', "namespaces.chat.subscribe"),
        ('[namespaces.chat]\npublish = "yes"\n', "namespaces.chat.publish"),
        ("[namespaces.chat]\nhistory_size = -1\n", "namespaces.chat.history_size"),
        ("namespaces = 3\n", "namespaces"),
    ],
)
def test_bad_namespace_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file=toml(tmp_path, text), env={})
    assert info.value.key == key


@pytest.mark.parametrize("name", ["PUSHGATE_NAMESPACES", "PUSHGATE_SCHEDULE"])
def test_toml_only_settings_in_env_are_refused_saying_where_they_go(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={name: "x"})
    assert info.value.key == name and "TOML file" in str(info.value)


# -- where a value came from, and errors that say so -----------------------------------------------

def test_sources_name_the_layer_of_every_value(tmp_path: Path) -> None:
    from pushgate.config import load_config_sources

    path = toml(tmp_path, "history_size = 7\nport = 1\n[namespaces.chat]\npublish = true\n")
    loaded = load_config_sources(file=path, env={"PUSHGATE_PORT": "2", "PUSHGATE_NODE_ID": "n"},
                                 cli={"node_id": "cli", "host": None})
    assert loaded.sources["history_size"] == str(path)
    assert loaded.sources["port"] == "PUSHGATE_PORT"
    assert loaded.sources["node_id"] == "--node-id"
    assert loaded.sources["host"] == "default"
    assert loaded.sources["namespaces"] == str(path)
    via_env = load_config_sources(env={"PUSHGATE_CONFIG": str(path)})
    assert via_env.sources["history_size"] == f"{path} (PUSHGATE_CONFIG)"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("port", "x", "config port: expected an integer, got 'x'"),
        ("max_connections", "1.5", "config max_connections: expected an integer, got '1.5'"),
        ("ping_interval", "fast", "config ping_interval: expected a number, got 'fast'"),
        ("ping_interval", "nan", "config ping_interval: expected a number, got 'nan'"),
        ("history_ttl", "inf", "config history_ttl: expected a number, got 'inf'"),
    ],
)
def test_coercion_errors_are_ours_and_name_the_source(tmp_path: Path, key: str, raw: str, expected: str) -> None:
    flag, env_name = "--" + key.replace("_", "-"), f"PUSHGATE_{key.upper()}"
    for kwargs, where in (
        ({"env": {}, "cli": {key: raw}}, flag),
        ({"env": {env_name: raw}}, env_name),
        ({"env": {}, "file": toml(tmp_path, f'{key} = "{raw}"\n')}, str(tmp_path / "pushgate.toml")),
    ):
        with pytest.raises(ConfigError) as info:
            load_config(**kwargs)  # type: ignore[arg-type]
        message = str(info.value)
        assert message.startswith(expected) and message.endswith(f"(from {where})"), message
        assert "literal" not in message and "convert" not in message  # no Python exception text


def test_validation_errors_name_the_source() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"PUSHGATE_WORKERS": "0"})
    assert str(info.value) == "config workers: must be >= 1 (from PUSHGATE_WORKERS)"
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={"port": "70000"})
    assert str(info.value) == "config port: must be 0..65535 (from --port)"


def test_unknown_pushgate_env_var_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"PUSHGATE_JWT_SECRT": "s3cret"})
    assert info.value.key == "PUSHGATE_JWT_SECRT"
    assert "unknown environment variable" in str(info.value) and "PUSHGATE_JWT_SECRET" in str(info.value)
    with pytest.raises(ConfigError):
        load_config(env={"PUSHGATE_WHATEVER": "1"})


def test_reserved_pushgate_env_vars_are_not_settings_and_not_errors() -> None:
    cfg = load_config(env={"PUSHGATE_TEST_TIMEOUT_SCALE": "3", "PUSHGATE_REUSE_PORT": "1", "OTHER": "x"})
    assert cfg == Config()


def test_unknown_toml_key_suggests_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(file=toml(tmp_path, "histroy_size = 3\n"), env={})
    assert "did you mean history_size?" in str(info.value)


# --- broker URL schemes and key prefix: the backends own the rules -------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "redis://127.0.0.1:6379/0",
        "rediss://127.0.0.1:6380/0",
        "valkey://127.0.0.1:6379/0",
        "unix:///run/redis.sock?db=0",
        "redis+cluster://127.0.0.1:7000",
        "rediss+cluster://127.0.0.1:7000",
        "valkey+cluster://127.0.0.1:7000",
        "redis+sentinel://127.0.0.1:26379,127.0.0.2:26379,127.0.0.3/mymaster",
        "rediss+sentinel://s1:26379/mymaster/2",
        "valkey+sentinel://u:p@s1,s2/mymaster?sentinel_password=x",
        "REDIS://127.0.0.1:6379/0",  # schemes are case-insensitive, as in create_stores
    ],
)
def test_every_scheme_the_backends_support_passes_validation(url: str) -> None:
    assert load_config(env={}, cli={"broker": url}).broker == url


def test_config_and_backends_share_one_scheme_list() -> None:
    from pushgate.backends import SUPPORTED_SCHEMES
    from pushgate.backends.redis import RedisConnection

    for scheme in SUPPORTED_SCHEMES:
        # a Sentinel URL names the sentinels and the monitored service
        url = f"{scheme}://127.0.0.1:26379/mymaster" if scheme.endswith("+sentinel") else f"{scheme}://127.0.0.1:6379"
        assert load_config(env={}, cli={"broker": url}).broker == url
        if scheme != "memory":
            RedisConnection(url)  # accepted by the Redis backend too, no ValueError


@pytest.mark.parametrize("url", ["kafka://x", "nats://localhost:4222", "redis", "127.0.0.1:6379", "", "mem://"])
def test_unknown_broker_scheme_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={"broker": url})
    assert info.value.key == "broker"
    assert "redis://" in str(info.value)  # names what is supported


@pytest.mark.parametrize("prefix", ["pg{x}", "{pg", "pg}", "a{b"])
def test_redis_prefix_with_braces_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env={"PUSHGATE_REDIS_PREFIX": prefix})
    assert info.value.key == "redis_prefix"
    assert load_config(env={"PUSHGATE_REDIS_PREFIX": "pg:app-1"}).redis_prefix == "pg:app-1"


def test_docs_configuration_lists_every_setting_with_its_default() -> None:
    """docs/configuration.md stays true: one row per setting, with its env var, flag, default and help."""
    import dataclasses
    from pathlib import Path

    from pushgate.config import SCALAR_FIELDS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    rows = {line for line in doc.splitlines() if line.startswith("| `")}
    for f in SCALAR_FIELDS:
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "(empty)" if default in (None, "", ()) else repr(default)
        flag = "--" + f.name.replace("_", "-")
        expected = f"| `{f.name}` | `PUSHGATE_{f.name.upper()}` | `{flag}` | {shown} | {f.metadata['help']} |"
        assert expected in rows, f"docs/configuration.md: row for {f.name} missing or stale"


# -- secrets and production mode (auth.startup_warnings / production_problems) -------------------

STRONG_SECRET = "3q8Zk1vVb0Qm7XyP2sLr9TfGh4JwNc6D"  # 32 bytes, not a placeholder
STRONG_KEY = "k7Hs2Pq9Wm4Xz8Lc"  # 16 characters


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"api_key": STRONG_KEY}, "production"),  # dev mode: anyone names themselves
        ({"jwt_secret": STRONG_SECRET}, "api_key"),  # a keyless HTTP API
        ({"jwt_secret": "change-me", "api_key": STRONG_KEY}, "jwt_secret"),
        ({"jwt_secret": "Change-Me-before-going-live-please!!", "api_key": STRONG_KEY}, "jwt_secret"),
        ({"jwt_secret": "short-but-random-Xq81", "api_key": STRONG_KEY}, "jwt_secret"),
        ({"jwt_secret": "s" * 40, "api_key": STRONG_KEY}, "jwt_secret"),
        ({"jwt_secret": STRONG_SECRET, "api_key": "k"}, "api_key"),
        ({"jwt_secret": STRONG_SECRET, "api_key": "password"}, "api_key"),
        ({"jwks_url": "http://idp.example.com/jwks.json", "api_key": STRONG_KEY}, "jwks_url"),
    ],
)
def test_production_refuses_dev_mode_keyless_api_and_weak_secrets(settings: dict[str, str], key: str) -> None:
    load_config(env={}, cli=settings)  # accepted outside production (warned about at start-up)
    with pytest.raises(ConfigError) as info:
        load_config(env={}, cli={**settings, "production": "true"})
    assert info.value.key == key
    assert "production" in str(info.value)


@pytest.mark.parametrize(
    "settings",
    [
        {"jwt_secret": STRONG_SECRET, "api_key": STRONG_KEY},
        {"jwks_url": "https://idp.example.com/.well-known/jwks.json", "api_key": STRONG_KEY},
        {"jwks_url": "http://127.0.0.1:9000/jwks.json", "api_key": STRONG_KEY},  # loopback: a sidecar
    ],
)
def test_production_accepts_a_complete_configuration(settings: dict[str, str]) -> None:
    cfg = load_config(env={"PUSHGATE_PRODUCTION": "1"}, cli=settings)
    assert cfg.production


def test_startup_warnings_name_weak_secrets_loudly() -> None:
    from pushgate.auth import startup_warnings

    assert startup_warnings(load_config(env={}, cli={"jwt_secret": STRONG_SECRET, "api_key": STRONG_KEY})) == []
    warnings = startup_warnings(load_config(env={}, cli={"jwt_secret": "change-me", "api_key": "abc"}))
    assert len(warnings) == 2
    assert "WEAK SECRET" in warnings[0] and "placeholder" in warnings[0] and "any user" in warnings[0]
    assert "WEAK SECRET" in warnings[1] and "3 characters" in warnings[1]
    short = startup_warnings(load_config(env={}, cli={"jwt_secret": "x1y2z3"}))
    assert short and "6 bytes" in short[0]
    production = load_config(env={}, cli={"jwt_secret": STRONG_SECRET, "api_key": STRONG_KEY, "production": "1"})
    assert any("allowed_origins" in w for w in startup_warnings(production))
    assert any("jwt_require_exp" in w for w in startup_warnings(production))


def test_namespace_presence_may_be_limited_to_subscribers(tmp_path: Path) -> None:
    cfg = load_config(file=toml(tmp_path, '[namespaces.room]\npresence = "subscribers"\n'), env={})
    assert cfg.namespace("room:1").presence == "subscribers"
    with pytest.raises(ConfigError) as info:
        load_config(file=toml(tmp_path, '[namespaces.room]\npresence = "everyone"\n'), env={})
    assert info.value.key == "namespaces.room.presence"
