//! Approval steps of a one-shot `shiphat run`: the person at the keyboard decides, or
//! `--approve STEP` decided in advance. There are no principals here, so an approval's
//! `approvers`, `required` and `allow_self` are the daemon's business: whoever runs the
//! command is trusted as they are with the deploy itself.

use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::pin::Pin;

use shiphat_runner::{ApprovalRequest, Approver, Decision, Vote};

pub struct Terminal {
    /// Steps approved with `--approve`.
    pub approved: Vec<String>,
}

/// Who answered, as the step's outputs name them: the login name where there is one.
fn person() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "terminal".to_owned())
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Approver for Terminal {
    fn ask(&self, request: ApprovalRequest) -> Pin<Box<dyn Future<Output = Decision> + Send>> {
        if self.approved.contains(&request.step) {
            let vote = Vote {
                principal: person(),
                approve: true,
                comment: "approved in advance with --approve".to_owned(),
                time: now(),
            };
            return Box::pin(std::future::ready(Decision::Approved(vec![vote])));
        }
        if !std::io::stdin().is_terminal() {
            return Box::pin(std::future::ready(Decision::Unavailable(format!(
                "step `{step}` needs an approval and there is no terminal to ask: run again with \
                 `--approve {step}` to approve it in advance, or run the workflow on a daemon \
                 (`shiphat run --server URL`), where it waits for {who} to decide through the \
                 web page, Slack, `shiphat runs approve` or the API",
                step = request.step,
                who = request.who(),
            ))));
        }
        Box::pin(async move {
            // The read blocks its thread until a line comes; a cancel or the step's timeout
            // ends the step without it, and the process exits when the run has ended.
            let timeout = request.timeout;
            let read = tokio::task::spawn_blocking(move || prompt(&request));
            let Ok(answer) = tokio::time::timeout(timeout, read).await else {
                return Decision::TimedOut {
                    approvals: Vec::new(),
                };
            };
            let answer = answer.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            match answer {
                Ok(Some(vote)) if vote.approve => Decision::Approved(vec![vote]),
                Ok(Some(vote)) => Decision::Rejected {
                    by: vote,
                    approvals: Vec::new(),
                },
                Ok(None) => Decision::Unavailable(
                    "the terminal closed before anyone answered the approval".to_owned(),
                ),
                Err(e) => Decision::Unavailable(format!("cannot ask on the terminal: {e}")),
            }
        })
    }
}

/// Asks on stderr and reads the answer from stdin: `y` approves, anything else rejects;
/// a rejection may say why. `None` when stdin closed.
fn prompt(request: &ApprovalRequest) -> std::io::Result<Option<Vote>> {
    let mut err = std::io::stderr().lock();
    let mut input = std::io::stdin().lock();
    writeln!(
        err,
        "\n{} {} needs approval ({} at most):\n    {}",
        console::style("?").for_stderr().yellow().bold(),
        console::style(&request.step_name).for_stderr().bold(),
        shiphat_host::fmt_duration(request.timeout),
        request.message
    )?;
    write!(err, "  Approve? [y/N] ")?;
    err.flush()?;
    let mut line = String::new();
    if input.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let approve = matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes");
    let comment = if approve {
        String::new()
    } else {
        write!(err, "  Why (optional)? ")?;
        err.flush()?;
        let mut why = String::new();
        input.read_line(&mut why)?;
        why.trim().to_owned()
    };
    Ok(Some(Vote {
        principal: person(),
        approve,
        comment,
        time: now(),
    }))
}
