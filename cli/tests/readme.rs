//! The README against the binary: every field of the README's JSON examples for
//! `netcheck` and `allocate` appears in the binary's real output (and every field the binary
//! prints is documented there), every subcommand and flag of the README's synopsis exists in
//! `--help`, and the documented commands that are safe on one machine run.
//!
//! Only loopback is used: `netcheck --embedded`, `netcheck` against `pinhole serve` on
//! 127.0.0.1/127.0.0.2 with a `--gateway` on 127.0.0.11 where nothing listens, and
//! `allocate` against `pinhole serve --turn` on 127.0.0.1. Nothing talks to a real gateway
//! or a public server.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pinhole");
const README: &str = include_str!("../../README.md");

/// A fenced code block: its info string, the README section it sits in (the last
/// "**`pinhole ...`**" paragraph before it), and its text.
struct Block {
    lang: String,
    section: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in README.lines() {
        if let Some((lang, text)) = &mut open {
            if line.trim_start().starts_with("```") {
                out.push(Block {
                    lang: std::mem::take(lang),
                    section: section.clone(),
                    text: std::mem::take(text),
                });
                open = None;
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            open = Some((lang.trim().to_owned(), String::new()));
        } else if let Some(rest) = line.strip_prefix("**`pinhole ") {
            section = rest.split('`').next().unwrap_or_default().to_owned();
        }
    }
    assert!(open.is_none(), "README: an unclosed code block");
    out
}

/// The JSON values of the README's `json` blocks in `section`: a block is one value, or
/// one value per line (JSON Lines).
fn readme_json(section: &str) -> Vec<serde_json::Value> {
    let mut values = Vec::new();
    for b in blocks()
        .into_iter()
        .filter(|b| b.lang == "json" && b.section == section)
    {
        match serde_json::from_str(&b.text) {
            Ok(v) => values.push(v),
            Err(_) => {
                for l in b.text.lines().filter(|l| !l.trim().is_empty()) {
                    let v = serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("README {section} JSON {l:?}: {e}"));
                    values.push(v);
                }
            }
        }
    }
    assert!(!values.is_empty(), "README: no JSON example for {section}");
    values
}

/// Every key path in `v`: `a`, `a.b`, `list[].c`.
fn paths(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.insert(p.clone());
                paths(v, &p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for v in a {
                paths(v, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn key_paths(v: &serde_json::Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    paths(v, "", &mut out);
    out
}

/// Runs the binary to its end (bounded).
fn output(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child, None, Duration::from_secs(60))
}

/// Waits for `child` (sending SIGINT after `interrupt_after`, if given); kills it at `limit`.
fn finish(
    mut child: Child,
    interrupt_after: Option<Duration>,
    limit: Duration,
) -> (Option<i32>, String, String) {
    let started = Instant::now();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut interrupted = false;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if let Some(after) = interrupt_after {
            if !interrupted && started.elapsed() >= after {
                interrupted = true;
                let ok = Command::new("kill")
                    .args(["-INT", &child.id().to_string()])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok, "kill -INT");
            }
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("pinhole did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, out.join().unwrap(), err.join().unwrap())
}

/// A `pinhole serve` child on loopback, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: &str) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `pinhole serve` with `args` after `--primary 127.0.0.1:PORT`; waits for its first line.
fn serve(args: impl Fn(u16) -> Vec<String>) -> Server {
    for _ in 0..10 {
        let port = free_port("127.0.0.1");
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(BIN)
            .args(["serve", "--primary", &addr, "--duration", "60"])
            .args(args(port))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let first = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next()
            .and_then(Result::ok);
        if first.is_some_and(|l| l.starts_with("listening")) {
            return Server { child, addr };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("pinhole serve did not start");
}

fn json_line(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn netcheck_json_example_matches_the_real_output() {
    let mut real = Vec::new();
    // The embedded run, as the README's first command.
    let (code, out, err) = output(&["netcheck", "--embedded", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    real.push(json_line(&out));
    // With --lifetime, interrupted (the lifetime object exists from the start).
    let child = Command::new(BIN)
        .args(["netcheck", "--embedded", "--json", "--lifetime"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, out, err) = finish(child, Some(Duration::from_secs(2)), Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let j = json_line(&out);
    assert!(j["binding_lifetime"].is_object(), "{j}");
    real.push(j);
    // The gateway probe, at a loopback address where nothing listens.
    let server = serve(|_| {
        let alt = free_port("127.0.0.2");
        vec!["--alternate".into(), format!("127.0.0.2:{alt}")]
    });
    let stun = format!("stun:{}", server.addr);
    let (code, out, err) = output(&[
        "netcheck",
        "--stun",
        &stun,
        "--gateway",
        "127.0.0.11",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let j = json_line(&out);
    assert!(j["portmap"].is_object(), "{j}");
    assert!(j["portmap"].get("error").is_none(), "{j}");
    real.push(j);

    let real_paths: BTreeSet<String> = real.iter().flat_map(key_paths).collect();
    let documented: BTreeSet<String> = readme_json("netcheck").iter().flat_map(key_paths).collect();
    let missing: Vec<_> = documented.difference(&real_paths).collect();
    assert!(
        missing.is_empty(),
        "README fields the binary does not print: {missing:?}"
    );
    let undocumented: Vec<_> = real_paths.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "fields the binary prints that the README's example lacks: {undocumented:?}"
    );
}

#[test]
fn allocate_json_example_matches_the_real_output() {
    let server = serve(|_| {
        ["--turn", "--user", "u:p"]
            .into_iter()
            .map(String::from)
            .collect()
    });
    let (code, out, err) = output(&[
        "allocate",
        "--turn",
        &format!("turn:{}", server.addr),
        "--user",
        "u",
        "--password",
        "p",
        "--duration",
        "1",
        "--json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let mut real: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in out.lines() {
        let j = json_line(l);
        let event = j["event"]
            .as_str()
            .unwrap_or_else(|| panic!("{j}"))
            .to_owned();
        real.entry(event).or_default().extend(key_paths(&j));
    }
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for j in readme_json("allocate") {
        let event = j["event"]
            .as_str()
            .unwrap_or_else(|| panic!("{j}"))
            .to_owned();
        documented.entry(event).or_default().extend(key_paths(&j));
    }
    for event in ["allocated", "deallocated"] {
        let (Some(doc), Some(got)) = (documented.get(event), real.get(event)) else {
            panic!("{event}: README {documented:?}, real {real:?}");
        };
        assert_eq!(doc, got, "{event}: README fields against the real ones");
    }
    for event in documented.keys() {
        assert!(
            real.contains_key(event),
            "README shows {event:?}, which this run cannot check: {real:?}"
        );
    }
}

/// The README's synopsis: subcommand -> the flags shown for it.
fn synopsis() -> BTreeMap<String, BTreeSet<String>> {
    let block = blocks()
        .into_iter()
        .find(|b| b.lang.is_empty() && b.text.starts_with("pinhole "))
        .expect("README: the synopsis block");
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in block.text.lines() {
        if let Some(rest) = line.strip_prefix("pinhole ") {
            current = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
        let flags = out.entry(current.clone()).or_default();
        for (i, _) in line.match_indices("--") {
            let flag: String = line[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            if !flag.is_empty() {
                flags.insert(format!("--{flag}"));
            }
        }
    }
    out
}

/// The long flags `pinhole <sub> --help` lists.
fn help_flags(sub: &str) -> BTreeSet<String> {
    let (code, out, err) = output(&[sub, "--help"]);
    assert_eq!(code, Some(0), "{sub} --help: {err}");
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("-h, ").unwrap_or(l);
            let flag: String = l
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            Some(format!("--{flag}"))
        })
        .collect()
}

#[test]
fn synopsis_matches_help() {
    let synopsis = synopsis();
    let (_, top, _) = output(&["--help"]);
    for sub in ["netcheck", "serve", "map", "allocate"] {
        assert!(synopsis.contains_key(sub), "README synopsis lacks {sub}");
    }
    for (sub, flags) in &synopsis {
        assert!(
            top.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "README synopsis: no subcommand {sub} in --help:\n{top}"
        );
        let help = help_flags(sub);
        let unknown: Vec<_> = flags.difference(&help).collect();
        assert!(
            unknown.is_empty(),
            "README synopsis of {sub}: {unknown:?} not in --help"
        );
        // The commands this test keeps complete: every flag they have is in the synopsis.
        if sub == "netcheck" || sub == "allocate" {
            let global = ["--help", "--log"].map(String::from);
            let missing: Vec<_> = help
                .difference(flags)
                .filter(|f| !global.contains(f))
                .collect();
            assert!(
                missing.is_empty(),
                "README synopsis of {sub} lacks {missing:?}"
            );
        }
    }
}

#[test]
fn documented_commands_run() {
    // Shell blocks that run the CLI: only the ones safe on one machine (loopback) run.
    let mut ran = 0;
    for b in blocks().into_iter().filter(|b| b.lang == "sh") {
        for line in b.text.lines() {
            let Some((_, args)) = line.split_once("-p pinhole-cli -- ") else {
                continue;
            };
            let args: Vec<&str> = args.split_whitespace().collect();
            // Both stay on loopback: the embedded servers, nothing else.
            let safe = (args.first() == Some(&"netcheck") && args.contains(&"--embedded"))
                || args == ["demo"];
            assert!(
                safe,
                "a documented command this test does not know to be safe: {line}"
            );
            let (code, out, err) = output(&args);
            assert_eq!(code, Some(0), "{line}: {err}");
            if args[0] == "demo" {
                assert!(
                    out.contains("direct:") && out.contains("relay:"),
                    "{line}: {out}"
                );
            } else {
                assert!(out.contains("mapped address"), "{line}: {out}");
            }
            ran += 1;
        }
    }
    assert!(ran > 0, "README: no documented pinhole command found");
}

#[test]
fn demo_json_example_matches_the_real_output() {
    let (code, out, err) = output(&["demo", "--json", "--datagrams", "300"]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["path"], "direct");
    assert_eq!(lines[1]["path"], "relay");
    assert_eq!(lines[1]["local"]["type"], "relay", "{out}");
    assert_ne!(lines[0]["local"]["type"], "relay", "{out}");
    let documented = readme_json("demo");
    for real in &lines {
        assert_eq!(key_paths(&documented[0]), key_paths(real), "{real}");
        assert!(
            real["throughput_mbps"].as_f64().is_some_and(|t| t > 0.0),
            "{real}"
        );
    }
}
