//! Slack slash commands over real HTTP on loopback: the signature checks (Slack's published
//! example included), a deploy that a retry does not start twice, the messages posted to a
//! local stand-in for `response_url`, and refusals that say why. Each test starts its own
//! `shiphat serve` with its own config, data directory and ports.

mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::http::{Reply, Server};
use support::{Daemon, TestDir};

/// How long any wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "test-signing-secret";
/// A bearer token for reading runs and the audit log through the API.
const ADMIN_TOKEN: &str = "chat-test-admin-token";

const WEB: &str = r#"
name: web
inputs:
  environment: { type: choice, choices: [staging, prod], default: staging }
  ref: { type: string, default: main }
  caller: { type: string, default: nobody }
concurrency: "web-${{ inputs.environment }}"
steps:
  - id: build
    uses: echo
    with: { message: "built ${{ inputs.ref }} for ${{ inputs.caller }}" }
  - id: test
    uses: echo
    needs: build
    with: { message: "tests passed" }
  - id: deploy
    uses: echo
    needs: test
    with: { message: "deployed to ${{ inputs.environment }}" }
"#;

const WEB_ROLLBACK: &str = r#"
name: web-rollback
inputs:
  environment: { type: string }
steps:
  - id: restore
    uses: echo
    with: { message: "restored ${{ inputs.environment }}" }
"#;

// Its failure message carries text that would ping a channel and forge a link if it reached
// Slack unescaped.
const API: &str = r#"
name: api
inputs:
  environment: { type: string }
steps:
  - id: migrate
    uses: echo
    with: { fail: "boom <!channel> @here <https://evil.example|docs>" }
on_failure:
  - id: undo
    uses: echo
    with: { message: "undone" }
"#;

// Takes the release as `release`, not `ref`: the config maps `@REF` to it for staging only.
const SITE: &str = r#"
name: site
inputs:
  release: { type: string, required: true }
steps:
  - id: deploy
    uses: echo
    with: { message: "deployed ${{ inputs.release }}" }
"#;

fn config(webhooks: &[&str]) -> String {
    format!(
        r#"
data_dir = "data"
workflows = ["workflows"]

[[principals]]
name = "root"
roles = ["admin"]
token_sha256 = "{token}"

[slack]
signing_secret = "{SECRET}"
response_hosts = ["127.0.0.1:*"]   # each test's stand-ins listen on a port of their own
webhooks = {webhooks:?}

[slack.apps.web]
staging = {{ workflow = "web", rollback = "web-rollback" }}
prod = {{ workflow = "web", rollback = "web-rollback" }}

[slack.apps.api]
staging = {{ workflow = "api" }}

[slack.apps.site]
staging = {{ workflow = "site", ref_input = "release" }}
prod = {{ workflow = "site" }}

[slack.channels]
prod = ["C0DEPLOYS"]

[[slack.users]]
user = "U0ALICE"
team = "T0ACME"
name = "alice"
roles = ["deployer"]
patterns = ["web/*", "web-rollback", "api", "site"]

[[slack.users]]
user = "U0OPS"
team = "T0ACME"
name = "ops"
roles = ["admin"]

[[slack.users]]
team = "T0ACME"
name = "everyone"
roles = ["viewer"]
"#,
        token = hex::encode(Sha256::digest(ADMIN_TOKEN)),
    )
}

fn start(dir: &TestDir) -> Daemon {
    Daemon::start(dir, &["--config", "shiphat.toml"])
}

/// A GET on the API as the admin principal.
fn api(daemon: &Daemon, path: &str) -> Value {
    let mut response = agent()
        .get(&daemon.url(path))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .call()
        .expect("the API answers");
    assert_eq!(response.status().as_u16(), 200, "GET {path}");
    response.body_mut().read_json().expect("JSON")
}

fn setup() -> TestDir {
    setup_with_webhooks(&[])
}

/// `webhooks` get the run events of chat deploys, as a deploy channel's incoming webhook would.
fn setup_with_webhooks(webhooks: &[&str]) -> TestDir {
    let dir = TestDir::new();
    dir.write("workflows/web.yaml", WEB);
    dir.write("workflows/web-rollback.yaml", WEB_ROLLBACK);
    dir.write("workflows/api.yaml", API);
    dir.write("workflows/site.yaml", SITE);
    dir.write("shiphat.toml", config(webhooks));
    dir
}

fn agent() -> ureq::Agent {
    support::agent(DEADLINE)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Slack's v0 signature of `body` at `timestamp`.
fn sign(secret: &str, timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("v0:{timestamp}:{body}").as_bytes());
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Posts a command body with the given headers; returns the status and the JSON answer.
fn post(daemon: &Daemon, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    post_at(daemon, "/chat/slack/commands", body, headers)
}

/// Posts a form body to `path` with the given headers; returns the status and the answer
/// (JSON, else the text).
fn post_at(daemon: &Daemon, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = agent()
        .post(&daemon.url(path))
        .header("Content-Type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.send(body.as_bytes()).expect("the daemon answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Posts a command signed now, as Slack would.
fn command(daemon: &Daemon, body: &str, retry: Option<&str>) -> (u16, Value) {
    let ts = now().to_string();
    let sig = sign(SECRET, &ts, body);
    let mut headers = vec![
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    if let Some(n) = retry {
        headers.push(("X-Slack-Retry-Num", n));
    }
    post(daemon, body, &headers)
}

/// A value of a form body, encoded as Slack encodes it.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A slash command's form body.
fn body(user: &str, channel: &str, text: &str, response_url: &str, trigger: &str) -> String {
    format!(
        "token=x&team_id=T0ACME&team_domain=acme&channel_id={channel}&channel_name={}&user_id={user}&user_name={}&command=%2Fdeploy&text={}&response_url={}&trigger_id={trigger}",
        channel.to_lowercase(),
        user.to_lowercase(),
        enc(text),
        enc(response_url),
    )
}

fn text(answer: &Value) -> &str {
    answer["text"].as_str().unwrap_or_default()
}

/// A local stand-in for Slack's `response_url`: each JSON body posted to it, in order.
struct Receiver {
    _server: Server,
    url: String,
    messages: mpsc::Receiver<Value>,
}

impl Receiver {
    fn start() -> Receiver {
        let (tx, messages) = mpsc::channel();
        let server = Server::start(move |request, _| {
            let _ = tx.send(request.json());
            Reply::ok()
        });
        let url = server.url("/commands/T0ACME/1/secret");
        Receiver {
            _server: server,
            url,
            messages,
        }
    }

    /// Messages until one contains `until` (that one included).
    fn until(&self, until: &str) -> Vec<Value> {
        let started = Instant::now();
        let mut got = Vec::new();
        loop {
            let left = DEADLINE.saturating_sub(started.elapsed());
            let message = self
                .messages
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no message with `{until}`; got {got:#?}"));
            let done = message["text"].as_str().is_some_and(|t| t.contains(until));
            got.push(message);
            if done {
                return got;
            }
        }
    }
}

fn runs(daemon: &Daemon) -> Vec<Value> {
    api(daemon, "/api/v1/runs")["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn requests_are_verified_before_anything_else() {
    let dir = setup();
    let daemon = start(&dir);

    // Slack's published example, signed with its secret: this daemon's secret differs, so
    // the vector is checked through the test's signer, which must reproduce it exactly.
    const SLACK_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    assert_eq!(
        sign("8f742231b10e8888abcd99yyyzzz85a5", "1531420618", SLACK_BODY),
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    );
    // The same vector against a daemon holding Slack's secret: the signature is accepted and
    // only the 2018 timestamp is refused.
    let kat = TestDir::new();
    kat.write("workflows/web.yaml", WEB);
    kat.write(
        "shiphat.toml",
        "data_dir = \"data\"\n[slack]\nsigning_secret = \"8f742231b10e8888abcd99yyyzzz85a5\"\n",
    );
    let kat_daemon = start(&kat);
    let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    let ts = ("X-Slack-Request-Timestamp", "1531420618");
    let (status, answer) = post(&kat_daemon, SLACK_BODY, &[ts, ("X-Slack-Signature", sig)]);
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("from now"),
        "the signature should match and the timestamp be refused: {answer}"
    );
    let flipped = sig.replacen("a2114", "a2115", 1);
    let (status, answer) = post(
        &kat_daemon,
        SLACK_BODY,
        &[ts, ("X-Slack-Signature", &flipped)],
    );
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("does not match"),
        "{answer}"
    );
    drop(kat_daemon);

    let receiver = Receiver::start();
    let help = body("U0ALICE", "C0DEV", "help", &receiver.url, "1.1.a");
    let (status, answer) = command(&daemon, &help, None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(text(&answer).contains("/deploy status"), "{answer}");

    let fresh = now().to_string();
    let good = sign(SECRET, &fresh, &help);
    // A flipped bit in the signature.
    let mut bytes = hex::decode(&good[3..]).unwrap();
    bytes[0] ^= 1;
    let bad = format!("v0={}", hex::encode(bytes));
    let (status, _) = post(
        &daemon,
        &help,
        &[
            ("X-Slack-Request-Timestamp", &fresh),
            ("X-Slack-Signature", &bad),
        ],
    );
    assert_eq!(status, 401, "a flipped bit");
    // A timestamp 301 s old, correctly signed.
    let old = (now() - 301).to_string();
    let (status, answer) = post(
        &daemon,
        &help,
        &[
            ("X-Slack-Request-Timestamp", &old),
            ("X-Slack-Signature", &sign(SECRET, &old, &help)),
        ],
    );
    assert_eq!(status, 401, "a stale timestamp");
    assert!(
        answer["error"].as_str().unwrap().contains("from now"),
        "{answer}"
    );
    // A missing header.
    let (status, answer) = post(&daemon, &help, &[("X-Slack-Request-Timestamp", &fresh)]);
    assert_eq!(status, 401, "no signature");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("X-Slack-Signature"),
        "{answer}"
    );
    let (status, _) = post(&daemon, &help, &[("X-Slack-Signature", &good)]);
    assert_eq!(status, 401, "no timestamp");
    // The same form, encoded differently (`%2F` as `/`): the bytes differ, so it is refused.
    let reencoded = help.replace("%2F", "/");
    assert_ne!(reencoded, help);
    let (status, _) = post(
        &daemon,
        &reencoded,
        &[
            ("X-Slack-Request-Timestamp", &fresh),
            ("X-Slack-Signature", &good),
        ],
    );
    assert_eq!(status, 401, "a re-encoded body");

    // Every refusal is in the audit log, with no principal.
    let audit = api(&daemon, "/api/v1/audit");
    let refused = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /chat/slack/commands" && e["status"] == 401)
        .count();
    assert_eq!(refused, 5, "{audit:#}");
    assert!(runs(&daemon).is_empty());
}

#[test]
fn a_deploy_starts_one_run_even_when_slack_retries_and_reports_each_step() {
    let dir = setup();
    let mut daemon = start(&dir);
    let receiver = Receiver::start();
    let deploy = body(
        "U0ALICE",
        "C0DEV",
        "web@v1.2 to staging",
        &receiver.url,
        "398738663015.1.abc",
    );
    let (status, answer) = command(&daemon, &deploy, None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(
        text(&answer).contains("started the deploy of `web` to `staging`"),
        "{answer}"
    );
    // Slack's retry of the same command: the same run, not a second one.
    let (status, retry) = command(&daemon, &deploy, Some("1"));
    assert_eq!(status, 200);
    assert!(text(&retry).contains("already started"), "{retry}");

    let messages = receiver.until("succeeded in");
    assert!(messages.len() <= 5, "Slack takes at most 5: {messages:#?}");
    assert!(text(&messages[0]).contains("started"), "{messages:#?}");
    assert!(
        messages.len() >= 3,
        "start, progress and result: {messages:#?}"
    );
    let last = text(messages.last().unwrap());
    for step in ["build", "test", "deploy"] {
        assert!(last.contains(&format!("✓ `{step}`")), "{last}");
    }
    assert!(
        last.contains("built v1.2 for alice (slack U0ALICE)"),
        "{last}"
    );

    let all = runs(&daemon);
    assert_eq!(all.len(), 1, "{all:#?}");
    let run_id = all[0]["id"].as_str().unwrap().to_owned();
    assert!(last.contains(&run_id), "{last}");
    assert_eq!(all[0]["principal"], "alice");
    assert_eq!(all[0]["inputs"]["ref"], "v1.2");

    // After a restart, a late retry still finds the first run.
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    daemon = start(&dir);
    let (_, retry) = command(&daemon, &deploy, Some("2"));
    assert!(text(&retry).contains(&run_id), "{retry}");
    assert_eq!(runs(&daemon).len(), 1);

    // The audit log names the principal and the Slack user.
    let audit = api(&daemon, "/api/v1/audit");
    let entries = audit["entries"].as_array().unwrap();
    let accepted = entries
        .iter()
        .find(|e| {
            e["target"] == run_id.as_str() && e["outcome"].as_str().unwrap().ends_with("accepted")
        })
        .unwrap_or_else(|| panic!("{audit:#}"));
    assert_eq!(accepted["principal"], "alice");
    assert!(
        accepted["outcome"].as_str().unwrap().contains("`U0ALICE`"),
        "{accepted}"
    );
    let replays = entries
        .iter()
        .filter(|e| e["outcome"].as_str().unwrap().contains("Slack retry"))
        .count();
    assert_eq!(replays, 2, "{audit:#}");
}

#[test]
fn a_failed_deploy_says_what_failed_and_that_the_rollback_ran_without_pinging() {
    let channel = Receiver::start();
    let dir = setup_with_webhooks(&[&channel.url]);
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let deploy = body("U0ALICE", "C0DEV", "api to staging", &receiver.url, "2.2.b");
    let (_, answer) = command(&daemon, &deploy, None);
    assert!(
        text(&answer).contains("started the deploy of `api`"),
        "{answer}"
    );
    let messages = receiver.until("failed in");
    let last = text(messages.last().unwrap());
    assert!(last.contains("✗ `migrate`"), "{last}");
    assert!(last.contains("failed: `migrate`"), "{last}");
    assert!(last.contains("rollback: ran, succeeded"), "{last}");
    assert!(last.contains("✓ `undo`"), "{last}");
    for message in &messages {
        let t = text(message);
        assert!(!t.contains("<!channel>") && !t.contains("@here"), "{t}");
        assert!(!t.contains("<https://evil"), "{t}");
    }
    assert!(last.contains("&lt;!channel&gt;"), "{last}");
    // The deploy channel's webhook got the start and the end, rollback included.
    let events = channel.until("failed and was rolled back");
    assert!(text(&events[0]).contains("started"), "{events:#?}");

    // The app's rollback workflow, on request.
    let rollback = body(
        "U0ALICE",
        "C0DEV",
        "rollback web in staging",
        &receiver.url,
        "2.3.c",
    );
    let (_, answer) = command(&daemon, &rollback, None);
    assert!(
        text(&answer).contains("started the rollback of `web` in `staging`"),
        "{answer}"
    );
    let last = receiver.until("succeeded in");
    assert!(
        text(last.last().unwrap()).contains("✓ `restore`"),
        "{last:#?}"
    );
}

#[test]
fn refusals_say_what_was_missing() {
    let dir = setup();
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let say = |user: &str, channel: &str, line: &str, trigger: &str| -> String {
        let (status, answer) = command(
            &daemon,
            &body(user, channel, line, &receiver.url, trigger),
            None,
        );
        assert_eq!(status, 200, "{answer}");
        text(&answer).to_owned()
    };

    // A viewer (the team-wide entry) may look but not deploy.
    let t = say("U0BOB", "C0DEV", "web to staging", "3.1");
    assert!(t.contains("`everyone` lacks the role `deployer`"), "{t}");
    // Production only from its channel.
    let t = say("U0ALICE", "C0DEV", "web to prod", "3.3");
    assert!(
        t.contains("`prod` may be deployed only from `C0DEPLOYS`"),
        "{t}"
    );
    // Locks need an admin; a locked environment refuses with who and why.
    let t = say("U0ALICE", "C0DEV", "lock web in staging freeze", "3.4");
    assert!(t.contains("lacks the role `admin`"), "{t}");
    let t = say(
        "U0OPS",
        "C0DEV",
        "lock web in staging release freeze",
        "3.5",
    );
    assert!(t.contains("locked `web-staging`"), "{t}");
    let t = say("U0ALICE", "C0DEV", "web to staging", "3.6");
    assert!(
        t.contains("`web-staging` is locked by `ops`: release freeze"),
        "{t}"
    );
    let t = say("U0BOB", "C0DEV", "status web", "3.7");
    assert!(t.contains("locked by `ops`: release freeze"), "{t}");
    let t = say("U0OPS", "C0DEV", "unlock web in staging", "3.8");
    assert!(t.contains("unlocked `web-staging`"), "{t}");
    // Unknown apps and environments, and text that is no command, show the right form.
    let t = say("U0ALICE", "C0DEV", "shop to staging", "3.9");
    assert!(
        t.contains("unknown app `shop`; the apps are `api`, `site`, `web`"),
        "{t}"
    );
    let t = say("U0ALICE", "C0DEV", "web to qa", "3.10");
    assert!(t.contains("deploys to `prod`, `staging`"), "{t}");
    let t = say("U0ALICE", "C0DEV", "lock web", "3.11");
    assert!(t.contains("/deploy lock APP in ENVIRONMENT REASON"), "{t}");
    assert!(runs(&daemon).is_empty(), "no refusal starts a run");
    // A stranger's request is refused by name.
    let stranger =
        body("U0ALICE", "C0DEV", "help", &receiver.url, "3.12").replace("T0ACME", "T0OTHER");
    let (_, answer) = command(&daemon, &stranger, None);
    assert!(
        text(&answer).contains("`U0ALICE` of team `T0OTHER` is not known"),
        "{answer}"
    );
}

/// Regression: `/deploy site@v2` to a workflow whose input is `release` failed with "takes no
/// ref input", and nothing warned when the daemon started.
#[test]
fn ref_input_maps_the_ref_and_a_mapping_that_cannot_work_is_warned_about() {
    let dir = setup();
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let deploy = body(
        "U0ALICE",
        "C0DEV",
        "site@v2 to staging",
        &receiver.url,
        "1.2.3",
    );
    let (status, answer) = command(&daemon, &deploy, None);
    assert_eq!(status, 200, "{answer}");
    assert!(text(&answer).contains("started"), "{answer}");
    let run = runs(&daemon)
        .into_iter()
        .find(|r| r["workflow"] == "site")
        .expect("a run of `site`");
    assert_eq!(run["inputs"]["release"], "v2", "{run}");

    let warnings = daemon.wait_for_stderr("requires the input `release`", DEADLINE);
    assert!(
        warnings.contains(
            "slack app `site` in `prod`: the workflow `site` requires the input `release`"
        ),
        "{warnings}"
    );
    assert!(
        !warnings.contains("slack app `site` in `staging`"),
        "{warnings}"
    );
}

#[test]
fn a_response_url_that_redirects_is_not_followed_and_the_port_counts() {
    // A `response_url` on an allowed host that answered 302 made the daemon post to the
    // redirect's target, and an allowed host was allowed on every port.
    let target = Receiver::start();
    let location = target.url.clone();
    let (tx, redirected) = mpsc::channel();
    let redirector = Server::start(move |request, _| {
        let _ = tx.send(request.json());
        Reply::new(302, "text/plain", "").header("location", location.clone())
    });
    let other_port = Receiver::start();
    let dir = setup();
    let config = config(&[]).replace(
        r#"response_hosts = ["127.0.0.1:*"]"#,
        &format!("response_hosts = [\"{}\"]", redirector.host()),
    );
    dir.write("shiphat.toml", config);
    let daemon = start(&dir);

    // Another port of the allowed host is not allowed: nothing is posted there.
    let deploy = body("U0ALICE", "C0DEV", "api to staging", &other_port.url, "8.1");
    let (_, answer) = command(&daemon, &deploy, None);
    assert!(
        text(&answer).contains("progress will not be posted here"),
        "{answer}"
    );

    let url = redirector.url("/commands/T0ACME/1/secret");
    let deploy = body("U0ALICE", "C0DEV", "web to staging", &url, "8.2");
    let (_, answer) = command(&daemon, &deploy, None);
    assert!(text(&answer).contains("started the deploy"), "{answer}");
    // Every message of the deploy reaches the allowed host, the result last; none is posted
    // again to where its 302 pointed.
    let started = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let message: Value = redirected
            .recv_timeout(left)
            .expect("the deploy's result reaches the response_url");
        if text(&message).contains("succeeded in") {
            break;
        }
    }
    assert!(
        target.messages.try_recv().is_err(),
        "the redirect was followed"
    );
    let seen = other_port.messages.try_recv();
    assert!(seen.is_err(), "posted to a port not allowed: {seen:?}");
}

#[test]
fn a_frozen_app_is_refused_with_the_reason_and_status_shows_its_window() {
    let dir = setup();
    let config = config(&[])
        + r#"
[[freezes]]
applies_to = ["api"]
timezone = "UTC"
from = "2000-01-01T00:00"
until = "2100-01-01T00:00"
reason = "holiday freeze"
"#;
    dir.write("shiphat.toml", config);
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let say = |line: &str, trigger: &str| -> String {
        let (status, answer) = command(
            &daemon,
            &body("U0ALICE", "C0DEV", line, &receiver.url, trigger),
            None,
        );
        assert_eq!(status, 200, "{answer}");
        text(&answer).to_owned()
    };
    let t = say("api to staging", "4.1");
    assert!(
        t.contains(
            "`api` may not deploy now: holiday freeze (frozen until 2100-01-01T00:00:00+00:00[UTC])"
        ),
        "{t}"
    );
    assert!(!t.contains("force"), "Slack cannot force: {t}");
    assert!(runs(&daemon).is_empty(), "a frozen app starts no run");
    let t = say("status api", "4.2");
    assert!(
        t.contains("⛔ closed: holiday freeze (frozen until 2100-01-01T00:00:00+00:00[UTC]); opens at 2100-01-01T00:00:00+00:00[UTC]"),
        "{t}"
    );
    // `web` has no window: its status says nothing of one.
    let t = say("status web", "4.3");
    assert!(!t.contains("deploy window") && !t.contains("closed"), "{t}");
}

/// Waits at an approval between its build and its deploy; a rejection rolls back.
const GATE: &str = r#"
name: gate
inputs:
  environment: { type: string, default: staging }
steps:
  - id: build
    uses: echo
    with: { message: "built" }
  - id: decide
    needs: build
    approval:
      message: "ship it to ${{ inputs.environment }}?"
      approvers: { roles: [deployer] }
    timeout: 60s
  - id: deploy
    uses: echo
    needs: decide
    with: { message: "deployed" }
on_failure:
  - id: undo
    uses: echo
    with: { message: "undone" }
"#;

/// The usual setup, plus the app `gate` (alice may deploy it) and carol, a second deployer.
fn setup_gate(webhooks: &[&str]) -> TestDir {
    let dir = setup_with_webhooks(webhooks);
    dir.write("workflows/gate.yaml", GATE);
    let config = config(webhooks).replace(
        r#"patterns = ["web/*", "web-rollback", "api", "site"]"#,
        r#"patterns = ["web/*", "web-rollback", "api", "site", "gate"]"#,
    ) + r#"
[slack.apps.gate]
staging = { workflow = "gate" }

[[slack.users]]
user = "U0CAROL"
team = "T0ACME"
name = "carol"
roles = ["deployer"]
patterns = ["gate"]
"#;
    dir.write("shiphat.toml", config);
    dir
}

/// The form body of a click on a button of `message` (a Block Kit message the daemon posted),
/// in the shape Slack documents for `block_actions`.
fn click(user: &str, action_id: &str, message: &Value, response_url: &str) -> String {
    let button = elements(message)
        .into_iter()
        .find(|e| e["action_id"] == action_id)
        .unwrap_or_else(|| panic!("no `{action_id}` button in {message:#}"));
    let payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0ACME"},
        "api_app_id": "A0SHIPHAT",
        "token": "x",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0DEV", "is_ephemeral": false},
        "trigger_id": "1700000000.1.abc",
        "team": {"id": "T0ACME", "domain": "acme"},
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": {"id": "C0DEV", "name": "dev"},
        "message": {"type": "message", "ts": "1700000000.000100", "text": message["text"], "blocks": message["blocks"]},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [{
            "action_id": action_id,
            "block_id": "approval",
            "text": button["text"],
            "value": button["value"],
            "style": button["style"],
            "type": "button",
            "action_ts": "1700000001.000200"
        }]
    });
    format!("payload={}", enc(&payload.to_string()))
}

/// Posts an interaction signed now, as Slack would.
fn interact(daemon: &Daemon, body: &str) -> (u16, Value) {
    let ts = now().to_string();
    let sig = sign(SECRET, &ts, body);
    let headers = [
        ("X-Slack-Request-Timestamp", ts.as_str()),
        ("X-Slack-Signature", sig.as_str()),
    ];
    post_at(daemon, "/chat/slack/interactions", body, &headers)
}

/// The elements (buttons) of a Block Kit message's blocks.
fn elements(message: &Value) -> Vec<Value> {
    message["blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The buttons' action ids of a Block Kit message.
fn buttons(message: &Value) -> Vec<String> {
    elements(message)
        .iter()
        .filter_map(|e| e["action_id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_approval_button_decides_a_waiting_run_and_the_message_says_who() {
    // Issue 18: a run waiting at an approval posts a Block Kit question with Approve and
    // Reject; a click comes back signed, is decided as the clicker's principal (four eyes
    // included) and the message is replaced by who decided.
    let channel = Receiver::start();
    let dir = setup_gate(&[&channel.url]);
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let deploy = body("U0ALICE", "C0DEV", "gate to staging", &receiver.url, "5.1");
    let (_, answer) = command(&daemon, &deploy, None);
    assert!(text(&answer).contains("started the deploy"), "{answer}");

    let question = receiver.until("waits for approval").pop().unwrap();
    let id = runs(&daemon)[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(question["response_type"], "in_channel", "{question:#}");
    assert_eq!(buttons(&question), ["approve", "reject"], "{question:#}");
    let q = text(&question);
    assert!(
        q.contains(&format!("run `{id}` waits for approval at `decide`")),
        "{q}"
    );
    assert!(q.contains("ship it to staging?"), "{q}");
    assert!(q.contains("role `deployer` (not `alice`"), "{q}");
    assert_eq!(
        question["blocks"][1]["elements"][0]["value"],
        format!("{id}/decide")
    );
    // The deploy channel gets the same question.
    let posted = channel.until("waits for approval").pop().unwrap();
    assert_eq!(buttons(&posted), ["approve", "reject"], "{posted:#}");
    assert_eq!(
        api(&daemon, &format!("/api/v1/runs/{id}"))["status"],
        "waiting"
    );

    // The interaction's own response_url, as Slack gives one per click.
    let clicks = Receiver::start();
    // A click whose signature does not match is refused like a command.
    let approve = click("U0CAROL", "approve", &question, &clicks.url);
    let ts = now().to_string();
    let bad = sign("not-the-secret", &ts, &approve);
    let (status, answer) = post_at(
        &daemon,
        "/chat/slack/interactions",
        &approve,
        &[
            ("X-Slack-Request-Timestamp", &ts),
            ("X-Slack-Signature", &bad),
        ],
    );
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("does not match"),
        "{answer}"
    );

    // A signed body that is no interaction is refused; a Slack user no entry maps is told so.
    let (status, answer) = interact(&daemon, "text=approve");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("`payload`"),
        "{answer}"
    );
    let stranger = click("U0ALICE", "approve", &question, &clicks.url).replace("T0ACME", "T0OTHER");
    let (status, _) = interact(&daemon, &stranger);
    assert_eq!(status, 200);
    let unknown = clicks.until("is not known").pop().unwrap();
    assert_eq!(unknown["response_type"], "ephemeral", "{unknown:#}");

    // Alice started it: her approval is refused, to her alone, and the message stays.
    let (status, _) = interact(
        &daemon,
        &click("U0ALICE", "approve", &question, &clicks.url),
    );
    assert_eq!(status, 200);
    let refused = clicks.until("four eyes").pop().unwrap();
    assert_eq!(refused["response_type"], "ephemeral", "{refused:#}");
    assert_eq!(refused["replace_original"], false, "{refused:#}");
    assert_eq!(
        api(&daemon, &format!("/api/v1/runs/{id}"))["status"],
        "waiting"
    );

    // Carol's approval decides it; the message now says so, without buttons.
    let (status, answer) = interact(&daemon, &approve);
    assert_eq!(status, 200, "{answer}");
    let updated = clicks.until("approved by `carol`").pop().unwrap();
    assert_eq!(updated["replace_original"], true, "{updated:#}");
    assert!(buttons(&updated).is_empty(), "{updated:#}");
    assert!(
        text(&updated).contains("`decide` was approved"),
        "{updated:#}"
    );
    let result = receiver.until("succeeded in").pop().unwrap();
    assert!(text(&result).contains("✓ `deploy`"), "{result:#}");

    // A second click on the decided question is refused with the service's words.
    let (status, _) = interact(&daemon, &click("U0CAROL", "reject", &question, &clicks.url));
    assert_eq!(status, 200);
    let late = clicks.until("✗").pop().unwrap();
    assert_eq!(late["response_type"], "ephemeral", "{late:#}");

    // Every click is audited as the clicker's principal, or none for the forged one.
    let audit = api(&daemon, "/api/v1/audit");
    let clicked: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "POST /chat/slack/interactions")
        .collect();
    assert_eq!(clicked.len(), 6, "{audit:#}");
    assert!(
        clicked.iter().any(|e| e["principal"] == "carol"
            && e["target"] == id.as_str()
            && e["outcome"].as_str().unwrap().contains("approved `decide`")),
        "{audit:#}"
    );
    assert!(
        clicked
            .iter()
            .any(|e| e["status"] == 401 && e["principal"].is_null()),
        "{audit:#}"
    );
}

#[test]
fn deploy_approve_and_reject_decide_a_waiting_run() {
    let dir = setup_gate(&[]);
    let daemon = start(&dir);
    let receiver = Receiver::start();
    let say = |user: &str, line: &str, trigger: &str| -> String {
        let (status, answer) = command(
            &daemon,
            &body(user, "C0DEV", line, &receiver.url, trigger),
            None,
        );
        assert_eq!(status, 200, "{answer}");
        text(&answer).to_owned()
    };

    let t = say("U0ALICE", "gate to staging", "6.1");
    assert!(t.contains("started the deploy"), "{t}");
    receiver.until("waits for approval");
    let first = runs(&daemon)[0]["id"].as_str().unwrap().to_owned();
    let t = say("U0BOB", "status gate", "6.2");
    assert!(
        t.contains(&format!("⏸ `{first}` by `alice` waits for approval")),
        "{t}"
    );
    let t = say("U0ALICE", &format!("approve {first}"), "6.3");
    assert!(t.contains("four eyes"), "{t}");
    let t = say("U0CAROL", &format!("reject {first} not on a Friday"), "6.4");
    assert!(
        t.contains("rejected `decide`") && t.contains("not on a Friday"),
        "{t}"
    );
    let result = receiver.until("failed in").pop().unwrap();
    assert!(
        text(&result).contains("rollback: ran, succeeded"),
        "{result:#}"
    );
    // `/deploy why` gives the run's account: who, from where, the rejection with its reason,
    // the rollback.
    let t = say("U0BOB", &format!("why {first}"), "6.45");
    assert!(
        t.contains(&format!(
            "`alice` started `gate` (run `{first}`) from Slack at "
        )),
        "{t}"
    );
    assert!(
        t.contains(
            "At `decide` the deploy was rejected: rejected by `carol` (\"not on a Friday\")"
        ),
        "{t}"
    );
    assert!(t.contains("The rollback ran and succeeded"), "{t}");

    let t = say("U0ALICE", "gate to staging", "6.5");
    assert!(t.contains("started the deploy"), "{t}");
    receiver.until("waits for approval");
    let second = runs(&daemon)[0]["id"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let t = say(
        "U0CAROL",
        &format!("approve {second}/decide looks good"),
        "6.6",
    );
    assert!(t.contains("approved `decide`"), "{t}");
    receiver.until("succeeded in");
    // A viewer is no approver.
    let t = say("U0BOB", &format!("approve {second}"), "6.7");
    assert!(t.starts_with('✗'), "{t}");
}

#[test]
fn a_run_started_through_the_api_asks_the_deploy_channel_and_a_click_decides_it() {
    // Issue 18: only runs started from Slack posted their question; a run started through the
    // API (or the web page, or the CLI) waited at its approval with the deploy channel told
    // nothing.
    let channel = Receiver::start();
    let dir = setup_gate(&[&channel.url]);
    let daemon = start(&dir);
    let mut response = agent()
        .post(&daemon.url("/api/v1/runs"))
        .header("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
        .send_json(serde_json::json!({"workflow": "gate", "inputs": {"environment": "staging"}}))
        .expect("the API answers");
    assert_eq!(response.status().as_u16(), 202);
    let run: Value = response.body_mut().read_json().unwrap();
    let id = run["id"].as_str().unwrap().to_owned();

    let question = channel.until("waits for approval").pop().unwrap();
    assert_eq!(buttons(&question), ["approve", "reject"], "{question:#}");
    let q = text(&question);
    assert!(
        q.contains(&format!("run `{id}` waits for approval at `decide`")),
        "{q}"
    );
    assert!(q.contains("(not `root`, who started it)"), "{q}");

    // The click comes back with a response_url of its own, and carol's approval decides it.
    let clicks = Receiver::start();
    let (status, answer) = interact(
        &daemon,
        &click("U0CAROL", "approve", &question, &clicks.url),
    );
    assert_eq!(status, 200, "{answer}");
    let updated = clicks.until("approved by `carol`").pop().unwrap();
    assert!(buttons(&updated).is_empty(), "{updated:#}");
    let done = Instant::now();
    while api(&daemon, &format!("/api/v1/runs/{id}"))["status"] != "succeeded" {
        assert!(done.elapsed() < DEADLINE, "run `{id}` did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The channel got the question once.
    let extra: Vec<Value> = channel.messages.try_iter().collect();
    assert!(
        !extra.iter().any(|m| text(m).contains("waits for approval")),
        "{extra:#?}"
    );
}
