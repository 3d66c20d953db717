//! `/ui` in a real headless Chromium: a run shown live while it runs,
//! then its decision, timeline and ballots as the server recorded them,
//! markup in a question shown as text, and the token asked for.
//!
//! These tests need Debian's `chromium` (or `$CONCLAVE_CHROMIUM`); without
//! one they fail saying so, unless `CONCLAVE_SKIP_BROWSER=1`.

use super::ui::{all_events, ask, board_calls, get, journaled_calls, team};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use conclave::journal::sqlite::SqliteJournal;
use conclave_tests::{conclave_bin, workspace};
use serde_json::Value;

/// Two sim nodes, three replicas, a majority: `{quick}` and `{slow}` are
/// the nodes' latencies.
/// `conclave serve` in a process of its own, killed when dropped.
struct Serving {
    child: std::process::Child,
    base: String,
    data: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn start(spec: &str, token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("team.toml"), spec).unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new(conclave_bin());
        cmd.args([
            "serve",
            "team.toml",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--data-dir",
        ])
        .arg(data.path())
        .current_dir(dir.path())
        .env("CONCLAVE_PLUGIN_DIR", workspace().join("target/plugins"))
        .env_remove("CONCLAVE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        if let Some(t) = token {
            cmd.args(["--token-env", "CONCLAVE_UI_TEST_TOKEN"])
                .env("CONCLAVE_UI_TEST_TOKEN", t);
        }
        let mut child = cmd.spawn().expect("conclave starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(at) = line.split(" at http://").nth(1) {
                    let _ = tx.send(Ok(at.split("/v1").next().unwrap_or_default().to_string()));
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            let _ = tx.send(Err(seen));
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(log)) => panic!("the server did not start:\n{log}"),
            Err(_) => panic!("the server did not start within 2 minutes"),
        };
        Serving {
            child,
            base: format!("http://{addr}"),
            data,
            _dir: dir,
        }
    }
}

/// The browser to test with: `$CONCLAVE_CHROMIUM`, else the first of
/// Chromium's usual names on the `PATH`. `None` (skip) only when
/// `CONCLAVE_SKIP_BROWSER=1`; otherwise a missing browser fails the test.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONCLAVE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    if std::env::var("CONCLAVE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipped: no Chromium found and CONCLAVE_SKIP_BROWSER=1");
        return None;
    }
    panic!(
        "the /ui tests need a Chromium to load the page in: install Debian's `chromium` \
         (apt-get install chromium), point CONCLAVE_CHROMIUM at one, or set \
         CONCLAVE_SKIP_BROWSER=1 to skip them"
    );
}

/// The DOM of `url` after `budget_ms` of the page's (virtual) time, as
/// headless Chromium serialises it. Each load gets a fresh profile.
async fn dump_dom(browser: &Path, url: &str, budget_ms: u32) -> String {
    let browser = browser.to_path_buf();
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={budget_ms}"))
            .arg("--dump-dom")
            .arg(&url)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", browser.display()));
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::BufReader::new(out), &mut s).ok();
            s
        });
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not dump {url} within 90 s", browser.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let dom = reader.join().unwrap();
        assert!(
            dom.contains("</html>"),
            "{} dumped no page for {url}: {dom:?}",
            browser.display()
        );
        dom
    })
    .await
    .unwrap()
}

/// An element of a dumped page: its tag, attributes, the ids of the
/// elements around it, and its text.
#[derive(Debug)]
struct Element {
    tag: String,
    attrs: Vec<(String, String)>,
    within: Vec<String>,
    text: String,
}

impl Element {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has_class(&self, class: &str) -> bool {
        self.attr("class")
            .is_some_and(|c| c.split_whitespace().any(|x| x == class))
    }

    fn is_in(&self, id: &str) -> bool {
        self.within.iter().any(|w| w == id)
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The elements of a page as Chromium serialises it (attributes in double
/// quotes, raw text only in `script` and `style`): enough to check what a
/// page shows without an HTML parser.
fn elements(html: &str) -> Vec<Element> {
    const VOID: [&str; 8] = ["meta", "link", "input", "br", "img", "hr", "source", "wbr"];
    let mut out: Vec<Element> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut at = 0;
    while let Some(lt) = html[at..].find('<').map(|i| at + i) {
        let text = unescape(&html[at..lt]);
        for &i in &open {
            out[i].text.push_str(&text);
        }
        if html[lt..].starts_with("<!--") {
            at = html[lt..].find("-->").map_or(html.len(), |i| lt + i + 3);
            continue;
        }
        if html[lt..].starts_with("<!") {
            at = html[lt..].find('>').map_or(html.len(), |i| lt + i + 1);
            continue;
        }
        if html[lt..].starts_with("</") {
            let end = html[lt..].find('>').map_or(html.len(), |i| lt + i);
            let tag = html[lt + 2..end].trim().to_ascii_lowercase();
            if let Some(p) = open.iter().rposition(|&i| out[i].tag == tag) {
                open.truncate(p);
            }
            at = end + 1;
            continue;
        }
        // A start tag: its name, then attributes up to `>`.
        let mut i = lt + 1;
        let b = html.as_bytes();
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' && b[i] != b'/' {
            i += 1;
        }
        let tag = html[lt + 1..i].to_ascii_lowercase();
        let mut attrs = Vec::new();
        loop {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            if i >= b.len() || b[i] == b'>' {
                break;
            }
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'>' {
                i += 1;
            }
            let name = html[start..i].to_ascii_lowercase();
            let mut value = String::new();
            if i < b.len() && b[i] == b'=' {
                i += 1;
                if b[i] == b'"' {
                    let end = html[i + 1..].find('"').map_or(html.len(), |e| i + 1 + e);
                    value = unescape(&html[i + 1..end]);
                    i = end + 1;
                } else {
                    let start = i;
                    while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'>' {
                        i += 1;
                    }
                    value = unescape(&html[start..i]);
                }
            }
            attrs.push((name, value));
        }
        at = (i + 1).min(html.len());
        let within = open
            .iter()
            .filter_map(|&o| out[o].attr("id").map(String::from))
            .collect();
        out.push(Element {
            tag: tag.clone(),
            attrs,
            within,
            text: String::new(),
        });
        if tag == "script" || tag == "style" {
            let close = format!("</{tag}");
            at = html[at..].find(&close).map_or(html.len(), |e| at + e);
            continue;
        }
        if !VOID.contains(&tag.as_str()) {
            open.push(out.len() - 1);
        }
    }
    out
}

fn by_id<'a>(els: &'a [Element], id: &str) -> &'a Element {
    els.iter()
        .find(|e| e.attr("id") == Some(id))
        .unwrap_or_else(|| panic!("no #{id} on the page"))
}

/// The row of `run` in `#runs`, if the page lists it.
fn run_row<'a>(els: &'a [Element], run: &str) -> Option<&'a Element> {
    els.iter()
        .find(|e| e.tag == "tr" && e.is_in("runs") && e.attr("data-run") == Some(run))
}

/// Polls `GET /v1/runs` until a run is listed; its id.
async fn first_run(c: &reqwest::Client, base: &str, token: Option<&str>) -> String {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, list) = get(c, &format!("{base}/v1/runs"), token).await;
        if let Some(id) = list["data"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < until, "no run listed: {list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_page_shows_a_run_live_then_its_decision_timeline_and_ballots() {
    let Some(browser) = chromium() else { return };
    // Calls of 6 s and 9 s: the run lasts long enough to be watched.
    let s = Serving::start(&team("6s", "9s"), None);
    let c = reqwest::Client::new();
    let asked = {
        let (c, url) = (c.clone(), format!("{}/v1/chat/completions", s.base));
        tokio::spawn(async move {
            c.post(url)
                .json(&ask("What is 6 * 7?"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let run = first_run(&c, &s.base, None).await;
    let began = Instant::now();

    // While it runs: listed as running, selected (the newest), no decision yet.
    let dom = dump_dom(&browser, &format!("{}/ui", s.base), 2_500).await;
    let live = elements(&dom);
    let row = run_row(&live, &run).unwrap_or_else(|| panic!("run {run} is not listed:\n{dom}"));
    assert_eq!(
        row.attr("data-state"),
        Some("running"),
        "the page should show the run running (the browser took {:?} of the run's 6 s or more): {row:?}",
        began.elapsed()
    );
    assert!(row.has_class("selected"), "{row:?}");
    assert!(
        row.text.contains("running") && row.text.contains("What is 6 * 7?"),
        "{row:?}"
    );
    assert_eq!(by_id(&live, "run").attr("data-run"), Some(run.as_str()));
    assert_eq!(by_id(&live, "decision").attr("data-state"), Some("running"));
    assert_eq!(by_id(&live, "status").attr("data-state"), Some("live"));

    // Once it ended: what the page shows is what the reply and the server say.
    let reply = asked.await.unwrap();
    assert_eq!(reply["conclave"]["run_id"], run.as_str(), "{reply}");
    let answer = reply["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no answer: {reply}"));
    let events = all_events(&c, &s.base, &run, None).await;
    let dom = dump_dom(&browser, &format!("{}/ui?run={run}", s.base), 2_500).await;
    let done = elements(&dom);
    let row = run_row(&done, &run).expect("the run is listed");
    assert_eq!(row.attr("data-state"), Some("decided"), "{row:?}");
    let decision = by_id(&done, "decision");
    assert_eq!(decision.attr("data-state"), Some("decided"), "{decision:?}");
    assert_eq!(decision.attr("data-answer"), Some(answer));
    let support = reply["conclave"]["support"].to_string();
    let total = reply["conclave"]["total"].to_string();
    assert_eq!(decision.attr("data-support"), Some(support.as_str()));
    assert_eq!(decision.attr("data-total"), Some(total.as_str()));
    assert!(
        decision
            .text
            .contains(&format!("support {support} of {total}")),
        "{decision:?}"
    );
    assert!(decision.text.starts_with(answer), "{decision:?}");

    // The timeline: a row per node that answered or attempted a call, a bar
    // per model call on its node's row, as many as the server recorded.
    let mut rows: Vec<&str> = done
        .iter()
        .filter(|e| e.is_in("timeline") && e.has_class("row"))
        .map(|e| e.attr("data-node").unwrap())
        .collect();
    rows.sort();
    let mut nodes: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "model-call" || e["event"] == "attempt")
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(rows, nodes);
    let mut bars = BTreeMap::new();
    for e in done
        .iter()
        .filter(|e| e.is_in("timeline") && e.has_class("call"))
    {
        *bars
            .entry(e.attr("data-node").unwrap().to_string())
            .or_insert(0) += 1;
        let (start, end): (f64, f64) = (
            e.attr("data-start-ms").unwrap().parse().unwrap(),
            e.attr("data-end-ms").unwrap().parse().unwrap(),
        );
        // Sim calls of 6 s and 9 s.
        assert!(end - start >= 5_900.0, "{e:?}");
    }
    let calls = board_calls(&events);
    assert!(!calls.is_empty());
    assert_eq!(bars, calls);
    let journal = SqliteJournal::open(s.data.path()).unwrap();
    assert_eq!(bars, journaled_calls(&*journal, &run));

    // The ballots: one row per ballot, with its replica, node and answer.
    let mut shown: Vec<(String, String, String, String)> = done
        .iter()
        .filter(|e| e.is_in("ballots") && e.tag == "tr" && e.attr("data-replica").is_some())
        .map(|e| {
            (
                e.attr("data-task").unwrap().to_string(),
                e.attr("data-replica").unwrap().to_string(),
                e.attr("data-node").unwrap().to_string(),
                e.attr("data-answer").unwrap().to_string(),
            )
        })
        .collect();
    let mut recorded: Vec<(String, String, String, String)> = events
        .iter()
        .filter(|e| e["event"] == "ballot")
        .map(|e| {
            (
                e["task"].as_str().unwrap().to_string(),
                e["ballot"]["replica"].to_string(),
                e["ballot"]["node"].as_str().unwrap().to_string(),
                e["ballot"]["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    shown.sort();
    recorded.sort();
    assert!(recorded.len() >= 2, "{events:?}");
    assert_eq!(shown, recorded);
    // The votes and the cancellations, as many as happened.
    let count = |id: &str, tag: &str| {
        done.iter()
            .filter(|e| e.is_in(id) && e.tag == tag && e.attr("data-task").is_some())
            .count()
    };
    let happened = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("votes", "tr"), happened("vote"));
    assert_eq!(count("cancellations", "li"), happened("replica-cancelled"));
    let last_vote = done
        .iter()
        .rev()
        .find(|e| e.is_in("votes") && e.has_class("vote"))
        .unwrap();
    assert!(
        last_vote
            .attr("data-decision")
            .unwrap()
            .starts_with("decided"),
        "{last_vote:?}"
    );
}

#[tokio::test]
async fn markup_in_a_question_is_shown_as_text() {
    let Some(browser) = chromium() else { return };
    let s = Serving::start(&team("10ms", "20ms"), None);
    let c = reqwest::Client::new();
    let question = "<img src=x onerror=\"document.title='pwned'\"> What is <b>2 + 2</b>?";
    let reply: Value = c
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&ask(question))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = reply["conclave"]["run_id"].as_str().unwrap();
    let dom = dump_dom(&browser, &format!("{}/ui#{run}", s.base), 2_500).await;
    let page = elements(&dom);
    // Nothing of it became an element, nothing of it ran.
    assert!(
        !page.iter().any(|e| e.tag == "img" || e.tag == "b"),
        "markup from a question became elements:\n{dom}"
    );
    let title = page.iter().find(|e| e.tag == "title").unwrap();
    assert_eq!(title.text, "Conclave: runs");
    // It is shown, as the text it is.
    assert_eq!(by_id(&page, "question").text, question);
    let row = run_row(&page, run).expect("the run is listed");
    let cell = page
        .iter()
        .find(|e| e.tag == "td" && e.has_class("question") && e.is_in("runs"))
        .unwrap();
    assert_eq!(cell.text, question, "{row:?}");
    assert!(dom.contains("&lt;img src=x onerror="), "{dom}");
}

#[tokio::test]
async fn the_page_asks_for_the_token_when_the_server_has_one() {
    let Some(browser) = chromium() else { return };
    let s = Serving::start(&team("10ms", "20ms"), Some("sesame"));
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth("sesame")
        .json(&ask("What is 1 + 1?"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let dom = dump_dom(&browser, &format!("{}/ui", s.base), 2_000).await;
    let page = elements(&dom);
    let login = by_id(&page, "login");
    assert_eq!(
        login.attr("hidden"),
        None,
        "the token form is hidden: {login:?}"
    );
    assert_eq!(by_id(&page, "token").attr("type"), Some("password"));
    assert_eq!(
        by_id(&page, "status").attr("data-state"),
        Some("unauthorised")
    );
    // No token, no runs.
    assert!(!page.iter().any(|e| e.attr("data-run").is_some()), "{dom}");
}
