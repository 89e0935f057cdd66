//! The shape of the code, checked: each module imports only the layers below its own (or its
//! own folder), and the domain knows no provider and no GraphQL.

use std::path::{Path, PathBuf};

/// The layers, top to bottom (`main`, the binary, starts what `app` builds). A module may
/// import a module of a later row, or any module of its own folder; not one of its own row
/// (the two leaves know nothing of each other), nor of an earlier one.
const LAYERS: &[&[&str]] = &[
    &["main"],
    &["app"],
    // Above every part it configures: a section may be a type its part owns.
    &["config"],
    &["demo"],
    &["http"],
    &["graphql"],
    &["sessions"],
    &["cache"],
    &["access"],
    &["providers"],
    &["telemetry"],
    &["net", "domain"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&module))
}

/// Every `.rs` file below `dir`, with its module path (`src/http/streams.rs`: `http::streams`;
/// a `mod.rs` is its folder's module).
fn sources(dir: &Path, path: &[String], out: &mut Vec<(Vec<String>, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        if file.is_dir() {
            let mut inner = path.to_vec();
            inner.push(name);
            sources(&file, &inner, out);
        } else if file.extension().is_some_and(|e| e == "rs") {
            let mut module = path.to_vec();
            if name != "mod" {
                module.push(name);
            }
            out.push((module, file));
        }
    }
}

/// The code of a Rust file without comments, strings and character literals (each replaced by
/// spaces), so that only code is read for paths and braces.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            // Block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(hashes) = raw_string_start(rest) {
            // r"…", r#"…"#, br#"…"#: ends at a quote followed by as many hashes.
            i += rest.iter().position(|&c| c == '"').unwrap() + 1;
            let end: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            while i < chars.len() && !chars[i..].starts_with(&end) {
                i += 1;
            }
            i += end.len();
            out.push(' ');
        } else if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if let Some(length) = char_literal(rest) {
            i += length;
            out.push(' ');
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The number of hashes of a raw string starting here, if one does.
fn raw_string_start(rest: &[char]) -> Option<usize> {
    let after_b = if rest.first() == Some(&'b') { &rest[1..] } else { rest };
    if after_b.first() != Some(&'r') {
        return None;
    }
    let hashes = after_b[1..].iter().take_while(|&&c| c == '#').count();
    (after_b.get(1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The length of a character literal starting here (`'{'`, `'\''`, `'\u{7f}'`), if one does
/// (a lifetime, `'a`, is not one).
fn char_literal(rest: &[char]) -> Option<usize> {
    if rest.first() != Some(&'\'') {
        return None;
    }
    if rest.get(1) == Some(&'\\') {
        // The escaped character, then up to the closing quote.
        return rest.get(3..)?.iter().position(|&c| c == '\'').map(|end| end + 4);
    }
    (rest.get(2) == Some(&'\'')).then_some(3)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One import: the top-level module it reaches, and the path as written.
struct Import {
    target: String,
    written: String,
}

/// The top-level modules `code` names, from a module at `module` (inline `mod x { … }` blocks
/// included): every `crate::` path, and every `super::` path that reaches the crate root.
fn imports(code: &str, module: &[String], crate_name: &str) -> Vec<Import> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    // Inline modules open here: name, and the brace depth inside them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut depth = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let word_start = i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':');
        if c == '{' {
            depth += 1;
            if let Some(name) = pending_mod.take() {
                inline.push((name, depth));
            }
            i += 1;
            continue;
        }
        if c == '}' {
            if inline.last().is_some_and(|(_, at)| *at == depth) {
                inline.pop();
            }
            depth -= 1;
            i += 1;
            continue;
        }
        if c == ';' {
            pending_mod = None;
        }
        if !word_start || !is_ident(c) {
            i += 1;
            continue;
        }
        let word: String = chars[i..].iter().take_while(|&&c| is_ident(c)).collect();
        let after = i + word.len();
        if word == "mod" {
            let name: String = chars[after..]
                .iter()
                .skip_while(|c| c.is_whitespace())
                .take_while(|&&c| is_ident(c))
                .collect();
            pending_mod = Some(name);
        }
        // The module the path starts from, and where its rest begins.
        let start = if word == "crate" || word == crate_name {
            Some((Vec::new(), after))
        } else if word == "super" {
            let mut base: Vec<String> =
                module.iter().cloned().chain(inline.iter().map(|(name, _)| name.clone())).collect();
            let mut at = i;
            while chars[at..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                base.pop();
                at += "super::".len();
            }
            Some((base, at.saturating_sub(2)))
        } else {
            None
        };
        let Some((base, rest_at)) = start else {
            i = after;
            continue;
        };
        if !chars[rest_at..].starts_with(&[':', ':']) {
            i = after;
            continue;
        }
        let rest = &chars[rest_at + 2..];
        let written: String = chars[i..].iter().take_while(|&&c| c != ';' && c != '(' && c != '\n').collect();
        let names = if base.is_empty() { first_segments(rest) } else { vec![base[0].clone()] };
        for target in names {
            found.push(Import { target, written: written.trim().to_owned() });
        }
        i = rest_at + 2;
    }
    found
}

/// The first segment of the path starting at `rest`, or of each path in a `{…}` group.
fn first_segments(rest: &[char]) -> Vec<String> {
    if rest.first() != Some(&'{') {
        let name: String = rest.iter().take_while(|&&c| is_ident(c)).collect();
        return vec![name];
    }
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for &c in rest {
        match c {
            '{' => depth += 1,
            '}' | ',' if depth == 1 => {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                names.push(name);
                item.clear();
                if c == '}' {
                    break;
                }
                continue;
            }
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 1 && c != '{' {
            item.push(c);
        }
    }
    names
}

#[test]
fn each_module_imports_only_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &[], &mut files);
    // The crate's modules are the ones the layers name, no more, no fewer.
    let lib = code_only(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut declared: Vec<&str> =
        lib.split(';').filter_map(|item| item.trim().strip_prefix("pub mod ")).map(str::trim).collect();
    declared.push("main");
    declared.sort();
    let mut layered: Vec<&str> = LAYERS.iter().flat_map(|row| row.iter().copied()).collect();
    layered.sort();
    assert_eq!(declared, layered, "every module of lib.rs has its place in LAYERS");

    let mut upward = Vec::new();
    let mut seen = 0;
    for (module, file) in &files {
        if module.first().map(String::as_str) == Some("lib") {
            continue;
        }
        let own = &module[0];
        let own_rank = rank(own).unwrap();
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for import in imports(&code, module, "checkout_gateway") {
            seen += 1;
            if import.target == "self" || import.target.is_empty() || import.target == *own {
                continue;
            }
            let file = file.strip_prefix(&src).unwrap().display();
            match rank(&import.target) {
                Some(target) if target > own_rank => {}
                Some(_) => upward.push(format!(
                    "{file}: `{}` imports {}, which is not below {own}",
                    import.written, import.target
                )),
                None => upward.push(format!("{file}: `{}` names no module of LAYERS", import.written)),
            }
        }
    }
    assert!(seen > 100, "the scan finds the imports ({seen})");
    assert!(upward.is_empty(), "imports against the layer order:\n{}", upward.join("\n"));
}

/// The scan itself: nested modules, groups, `super::` up to the root, inline modules, and
/// what only looks like a path (a comment, a string).
#[test]
fn the_import_scan_sees_nested_paths_groups_and_super() {
    let code = code_only(
        r##"
        use crate::http::streams::Guarded;
        use crate::{cache::{Key, Lookup}, domain};
        // use crate::app;
        const S: &str = "crate::demo";
        const R: &str = r#"crate::demo "quoted" "#;
        const C: char = '{';
        const Q: char = '\'';
        fn f<'a>(x: &'a str) { super::super::graphql::schema(); }
        use super::sibling::Thing;
        #[cfg(test)]
        mod tests {
            use super::super::super::config::Config;
            use super::*;
        }
        "##,
    );
    let module = ["cache".to_owned(), "replicated".to_owned()];
    let found: Vec<String> =
        imports(&code, &module, "checkout_gateway").into_iter().map(|i| i.target).collect();
    assert_eq!(found, ["http", "cache", "domain", "graphql", "cache", "config", "cache"]);
}

#[test]
fn the_domain_knows_no_provider_and_no_graphql() {
    let domain = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/domain.rs")).unwrap();
    let code: String =
        domain.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
    for word in ["async_graphql", "crate::", "dhmad", "Dhmad", "DHMAD", "dodo", "Dodo", "DODO"] {
        assert!(!code.contains(word), "domain.rs mentions `{word}`");
    }
}
