//! The binary: `schema` matches the committed contract, `--help`, and bad configuration.

use std::process::Command;

use checkout_gateway::providers::Registry;

fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_checkout-gateway"));
    for var in ["GATEWAY_LISTEN", "DHMAD_API_KEY", "DODO_PAYMENTS_API_KEY", "GATEWAY_CONFIG", "GATEWAY_DEMO"]
    {
        command.env_remove(var);
    }
    command
}

#[test]
fn schema_graphql_is_exactly_what_the_binary_prints() {
    let output = gateway().arg("schema").output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert!(
        printed == committed,
        "schema.graphql is out of date: run `cargo run -- schema > schema.graphql` and review the diff"
    );
    assert!(printed.contains("@link(") && printed.contains("@key(fields: \"provider id\")"));
}

#[test]
fn help_lists_every_setting_with_its_variable_and_hides_secret_values() {
    let output = gateway().arg("--help").env("DHMAD_API_KEY", "sk_live_do_not_print").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for name in [
        "GATEWAY_LISTEN",
        "DHMAD_API_KEY",
        "DHMAD_BASE_URL",
        "DODO_PAYMENTS_API_KEY",
        "DODO_PAYMENTS_BASE_URL",
        "GATEWAY_CACHE_TTL_OPEN",
        "--demo",
        "--config",
        "schema",
    ] {
        assert!(help.contains(name), "--help does not mention {name}");
    }
    assert!(!help.contains("sk_live_do_not_print"));
}

#[test]
fn a_bad_value_stops_startup_naming_the_setting() {
    let output = gateway()
        .env("GATEWAY_CACHE_TTL_OPEN", "soon")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("GATEWAY_CACHE_TTL_OPEN"), "{stderr}");
}

#[test]
fn a_dodo_webhook_secret_without_a_key_stops_startup_naming_it() {
    // `whsec_` alone would be an empty HMAC key: anyone could sign with it.
    let output = gateway()
        .env("DODO_PAYMENTS_WEBHOOK_KEY", "whsec_")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("DODO_PAYMENTS_WEBHOOK_KEY") && stderr.contains("holds no key"), "{stderr}");
}

#[test]
fn an_unknown_config_key_is_refused() {
    let dir = std::env::temp_dir().join(format!("cg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "cache_ttl_opne = \"5s\"\n").unwrap();
    let output = gateway().arg("--config").arg(&file).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("cache_ttl_opne"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap()
}

#[test]
fn the_readme_documents_every_setting_the_code_has() {
    let readme = readme();
    let command = checkout_gateway::config::command(&Registry::builtin());
    let mut checked = 0;
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else { continue };
        let row = format!("| `{}` | `--{long}` |", env.to_string_lossy());
        assert!(readme.contains(&row), "the README's configuration table has no row `{row}`");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} settings found");
}

#[test]
fn the_readme_documents_every_account_key_the_code_has() {
    // serde's refusal of an unknown key lists every key the code accepts.
    let dir = std::env::temp_dir().join(format!("cg-readme-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, "[accounts.a]\nno_such_key = 1\n").unwrap();
    let error =
        checkout_gateway::config::Sources::from_file(&file, &Registry::builtin()).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    let expected = error.split("expected one of").nth(1).expect("serde lists the keys");
    let keys: Vec<&str> = expected.split(',').map(|key| key.trim().trim_matches('`')).collect();
    assert!(keys.contains(&"api_key_file"), "{keys:?}");
    let readme = readme();
    for key in keys {
        assert!(
            readme.contains(&format!("| `{key}` |")),
            "the README's accounts table has no row for `{key}`"
        );
    }
}

#[test]
fn the_production_config_file_and_its_account_example_are_valid() {
    use checkout_gateway::config::{Config, LegacyAccount, Secret, Sources};
    let registry = Registry::builtin();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/k8s/overlays/production/gateway.toml");
    // Production sets every provider's key variable (DHMAD_API_KEY, DODO_PAYMENTS_API_KEY)
    // from the Secret.
    let variables = Sources {
        legacy: registry
            .iter()
            .map(|kind| {
                (
                    kind.slug.to_owned(),
                    LegacyAccount { api_key: Some(Secret::new("key")), ..LegacyAccount::default() },
                )
            })
            .collect(),
        ..Sources::default()
    };
    let in_file = Sources::from_file(std::path::Path::new(path), &registry).unwrap();
    let shipped = Config::resolve(variables.or(in_file), &registry).unwrap();
    let names: Vec<&str> = shipped.accounts.iter().map(|a| &*a.name).collect();
    assert_eq!(names, ["dhmad", "dodo"], "the shipped file adds no account");
    let dhmad = &shipped.accounts[0];
    assert_eq!(dhmad.rate_limit.as_ref().map(ToString::to_string).as_deref(), Some("10/min"));

    // The commented example, uncommented, with its key file where the Secret would be.
    let dir = std::env::temp_dir().join(format!("cg-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("DODO_TEST_API_KEY");
    std::fs::write(&key, "dodo-test-key\n").unwrap();
    let text = std::fs::read_to_string(path).unwrap();
    let example: String = text
        .lines()
        .skip_while(|line| !line.starts_with("# [accounts."))
        .take_while(|line| *line != "#")
        .map(|line| {
            line.trim_start_matches("# ").replace("/var/run/secrets/checkout-gateway", dir.to_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(example.contains("api_key_file"), "{example}");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, example).unwrap();
    // The load step reads the key file the example names.
    let config = Config::resolve(Sources::from_file(&file, &registry).unwrap().gather(), &registry).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let account = &config.accounts[0];
    assert_eq!((&*account.name, account.base_url.as_str()), ("dodo_test", "https://test.dodopayments.com"));
    assert_eq!(account.api_key.as_ref().map(|k| k.expose()), Some("dodo-test-key"));
}

#[test]
fn a_duration_past_thirty_days_stops_startup_naming_the_setting() {
    // Unbounded, this was accepted and overflowed the clock at the first lookup.
    let output = gateway()
        .env("GATEWAY_LOOKUP_DEADLINE", "100000000years")
        .env("GATEWAY_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("GATEWAY_LOOKUP_DEADLINE") && stderr.contains("30 days"), "{stderr}");
}

#[test]
fn a_jwks_url_over_plain_http_is_refused_unless_it_is_loopback() {
    // Over plain HTTP anyone on the path could substitute the keys and mint tokens.
    let jwt = |url: &str| {
        gateway()
            .env("GATEWAY_LISTEN", "127.0.0.1:0")
            .env("GATEWAY_AUTH", "jwt")
            .env("GATEWAY_JWT_JWKS_URL", url)
            .env("GATEWAY_JWT_ISSUER", "https://auth.example.test/")
            .env("GATEWAY_JWT_AUDIENCE", "checkout-gateway")
            .env("GATEWAY_JWT_JWKS_REFRESH", "not-a-duration")
            .output()
            .unwrap()
    };
    let output = jwt("http://auth.example.test/.well-known/jwks.json");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("GATEWAY_JWT_JWKS_URL") && stderr.contains("https://"), "{stderr}");
    // Loopback passes that check: the next setting is the one refused.
    let stderr = String::from_utf8(jwt("http://127.0.0.1:9/jwks.json").stderr).unwrap();
    assert!(stderr.contains("GATEWAY_JWT_JWKS_REFRESH"), "{stderr}");
}
