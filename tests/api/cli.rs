//! The binary: `schema` matches the committed contract, `--help`, and bad configuration.

use std::process::Command;

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
