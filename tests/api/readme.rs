//! Every `curl` in the README runs as written against `--demo`, and answers what the README
//! shows after it. The commands are taken from the README itself.

use serde_json::Value;

use checkout_gateway::config::Config;

use crate::support::app::start;

/// The README's fenced blocks, in order: (language, text).
fn blocks(readme: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(language) = line.strip_prefix("```") else { continue };
        let mut text = String::new();
        for inner in lines.by_ref() {
            if inner.starts_with("```") {
                break;
            }
            text.push_str(inner);
            text.push('\n');
        }
        blocks.push((language.trim().to_owned(), text));
    }
    blocks
}

#[tokio::test]
async fn every_curl_in_the_readme_answers_what_the_readme_shows() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let config = Config { listen: "127.0.0.1:0".parse().unwrap(), demo: true, ..Config::default() };
    let addr = start(config).await;
    let blocks = blocks(&readme);
    let mut checked = 0;
    for (i, (language, command)) in blocks.iter().enumerate() {
        if language != "sh" || !command.contains("curl ") || !command.contains("127.0.0.1:8080") {
            continue;
        }
        let command = command.replace("127.0.0.1:8080", &addr.to_string());
        let stdout = if command.contains("text/event-stream") {
            first_event(&command).await
        } else {
            let output = tokio::process::Command::new("bash").arg("-c").arg(&command).output().await.unwrap();
            assert!(output.status.success(), "{command}\n{}", String::from_utf8_lossy(&output.stderr));
            output.stdout
        };
        let answer: Value = serde_json::from_slice(&stdout)
            .unwrap_or_else(|e| panic!("{command}\nanswered {}: {e}", String::from_utf8_lossy(&stdout)));
        let (next_language, shown) = blocks.get(i + 1).expect("the answer is shown after the command");
        assert_eq!(next_language, "json", "the block after {command} shows its answer");
        let shown: Value = serde_json::from_str(shown).unwrap();
        assert_eq!(answer, shown, "{command}");
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} commands found");
}

/// A streaming command (Server-Sent Events) runs until its first event; that event's data.
async fn first_event(command: &str) -> Vec<u8> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(command)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                return data.as_bytes().to_vec();
            }
        }
        panic!("{command}: the stream ended without an event");
    };
    let data =
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("an event within 10 s");
    child.kill().await.unwrap();
    data
}

/// Every file of this repository the README (or BENCHMARKS.md) names in backticks exists: a
/// renamed file must not leave the instructions pointing nowhere.
#[test]
fn every_repository_file_the_documents_name_exists() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tops = ["k8s/", "src/", "tests/", "bench/", ".ci/", "scripts/", "assets/", "vendor/", "docs/"];
    let mut named = 0;
    for document in ["README.md", "BENCHMARKS.md"] {
        let text = std::fs::read_to_string(root.join(document)).unwrap();
        for (at, quoted) in text.split('`').enumerate() {
            // Odd pieces are inside backticks; a path is one word with a file's extension.
            let path = quoted.trim_end_matches([':', ',', '.']);
            if at % 2 == 0 || !tops.iter().any(|top| path.starts_with(top)) {
                continue;
            }
            if path.contains(['<', '{', ' ', '*', '…'])
                || !path.rsplit('/').next().unwrap_or("").contains('.')
            {
                continue;
            }
            named += 1;
            assert!(root.join(path).exists(), "{document} names `{path}`, which does not exist");
        }
    }
    assert!(named >= 5, "only {named} file names found: the scan is broken");
}

/// The README's "Refusals" table lists every refusal code the gateway sends, each with the
/// status it is sent with, and no other: a new code must be documented where clients look.
#[test]
fn every_refusal_code_is_in_the_readme_with_its_status() {
    use checkout_gateway::http::refusal::Code;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (_, section) = readme.split_once("\n### Refusals\n").expect("the README has a Refusals section");
    let section = section.split("\n#").next().unwrap_or(section);
    // Rows of the table: | `CODE` | status | when |
    let rows: std::collections::BTreeMap<&str, &str> = section
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix('|')?.split('|').map(str::trim);
            let code = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            Some((code, cells.next()?))
        })
        .filter(|(code, _)| *code != "code")
        .collect();
    for code in Code::ALL {
        let status =
            rows.get(code.as_str()).unwrap_or_else(|| panic!("{} is not in the README", code.as_str()));
        assert_eq!(*status, code.status().as_str(), "the README's status for {}", code.as_str());
    }
    let codes: Vec<&str> = Code::ALL.iter().map(|code| code.as_str()).collect();
    for documented in rows.keys() {
        assert!(codes.contains(documented), "the README lists {documented}, which no refusal sends");
    }
}
