//! What `shiphat` prints: the live human view of a run, JSON Lines events, and errors.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shiphat_host::PluginInfo;
use shiphat_runner::{Event, LogLevel, RunOutcome, RunReport, Section, StepStatus};
use shiphat_workflow::Workflow;

use crate::Sink;

/// Writes one line. A write error (a reader that went away: EPIPE) is ignored, because
/// output is never worth stopping a run for; see `outln!`.
pub fn write_line(out: &mut impl Write, args: std::fmt::Arguments<'_>) {
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// Prints an error and its causes to stderr.
pub fn error(e: &anyhow::Error) {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    errln!("{} {text}", style("error:").for_stderr().red().bold());
}

/// After an abort (a second Ctrl-C): what the run left unfinished, so whoever aborted knows
/// what to check by hand.
pub fn aborted(report: &RunReport) {
    let unfinished: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.status == StepStatus::Cancelled)
        .map(|s| {
            let state = if s.attempts > 0 {
                "stopped while running"
            } else {
                "never ran"
            };
            format!("  {} ({}): {state}", s.id, s.section.as_str())
        })
        .collect();
    if unfinished.is_empty() {
        return;
    }
    errln!(
        "{} aborted; these steps did not finish, check what they change by hand:\n{}",
        style("!").for_stderr().yellow().bold(),
        unfinished.join("\n")
    );
}

/// A warning on stderr: something worked, but probably not as meant.
pub fn warn(text: &str) {
    errln!("{} {text}", style("warning:").for_stderr().yellow().bold());
}

/// For `validate --explain-if`: when each step runs, as GitHub Actions' rules read its `if`.
pub fn explain_if(workflow: &Workflow) {
    let sections = [
        ("steps", &workflow.steps),
        ("on_failure", &workflow.on_failure),
        ("finally", &workflow.finally),
    ];
    for (section, steps) in sections {
        for step in steps.iter() {
            let needs: Vec<&str> = step.needs.iter().map(|&n| steps[n].id.as_str()).collect();
            let after = if needs.is_empty() {
                String::new()
            } else {
                format!(" after {}", needs.join(", "))
            };
            let when = match &step.condition {
                None => "success()".to_owned(),
                Some(c) if c.calls_status() => c.source().to_owned(),
                Some(c) => format!("success() && ({})", c.source()),
            };
            errln!(
                "{}:{}: {section} `{}`{after} runs when `{when}`",
                workflow.file.display(),
                step.location.line,
                step.id
            );
        }
    }
}

/// A line of information on stderr.
pub fn note(text: &str) {
    errln!("{text}");
}

/// For `validate --warm`: what became of one plugin.
pub fn warmed(path: &std::path::Path, load: shiphat_host::LoadKind) {
    let name = path
        .file_name()
        .unwrap_or(path.as_os_str())
        .to_string_lossy();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let what = match load {
        shiphat_host::LoadKind::Compiled => "compiled into the compile cache",
        shiphat_host::LoadKind::Cached => "already in the compile cache",
    };
    note(&format!(
        "warm: {name} ({}): {what}",
        shiphat_protocol::fmt_size(size)
    ));
}

/// Writes every event as one JSON line on stdout.
pub fn json_sink() -> Sink {
    Arc::new(move |event: Event| {
        let line = serde_json::to_string(&event).expect("events always serialise");
        outln!("{line}");
    })
}

/// The live view: a spinner and timer per running step, log lines under their step, a line
/// per finished step, and a summary.
pub fn human_sink(workflow: &Workflow) -> Sink {
    let live = console::Term::stdout().is_term();
    let multi = MultiProgress::with_draw_target(if live {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let width = workflow
        .all_steps()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .min(32);
    // Steps that can change something outside shiphat: those granted `write` or `http`.
    let changers = workflow
        .steps
        .iter()
        .filter(|s| !s.allow.write.is_empty() || !s.allow.http.is_empty())
        .map(|s| s.id.clone())
        .collect();
    let approvals = workflow
        .all_steps()
        .filter(|s| matches!(s.kind, shiphat_workflow::StepKind::Approval(_)))
        .map(|s| s.id.clone())
        .collect();
    let state = Mutex::new(Human {
        multi,
        live,
        approvals,
        asking: Vec::new(),
        width,
        bars: HashMap::new(),
        on_failure_ran: Vec::new(),
        changers,
        skipped: Vec::new(),
    });
    Arc::new(move |event| state.lock().unwrap().event(event))
}

struct Human {
    multi: MultiProgress,
    live: bool,
    /// The ids of the approval steps: while one waits, a person is asked on the terminal, so
    /// the spinners stop drawing and lines are printed plainly.
    approvals: Vec<String>,
    /// The approval steps waiting now.
    asking: Vec<String>,
    width: usize,
    bars: HashMap<String, ProgressBar>,
    on_failure_ran: Vec<String>,
    /// The ids of the steps of `steps` that can change something (see `human_sink`).
    changers: Vec<String>,
    /// Steps of `steps` that were skipped, with their summaries (`skipped: why`).
    skipped: Vec<(String, String)>,
}

impl Human {
    fn print(&self, line: String) {
        if self.live && self.asking.is_empty() {
            let _ = self.multi.println(line);
        } else {
            outln!("{line}");
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::RunStarted {
                run_id,
                workflow,
                dry_run,
                ..
            } => {
                let dry = if dry_run { " (dry run)" } else { "" };
                self.print(format!(
                    "{} {}{dry}  {}",
                    style("▶").cyan(),
                    style(workflow).bold(),
                    style(format!("run {run_id}")).dim()
                ));
            }
            Event::StepStarted {
                step,
                name,
                attempt,
                ..
            } => {
                if !self.live {
                    return;
                }
                if self.approvals.contains(&step) {
                    if self.asking.is_empty() {
                        self.multi.set_draw_target(ProgressDrawTarget::hidden());
                    }
                    self.asking.push(step);
                    return;
                }
                let bar = self.bars.entry(step).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner:.cyan} {msg} {elapsed:.dim}")
                            .expect("a valid template")
                            .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
                    );
                    bar.enable_steady_tick(Duration::from_millis(80));
                    bar
                });
                let attempt = if attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                bar.set_message(format!("{:<w$}{attempt}", name, w = self.width));
            }
            Event::Log {
                step,
                level,
                message,
                ..
            } => {
                let text = format!("    {} {message}", style(format!("{step} │")).dim());
                let text = match level {
                    LogLevel::Error => style(text).red().to_string(),
                    LogLevel::Warn => style(text).yellow().to_string(),
                    _ => text,
                };
                self.print(text);
            }
            Event::StepFinished {
                step,
                name,
                section,
                status,
                duration_ms,
                summary,
                continued,
                ..
            } => {
                if let Some(bar) = self.bars.remove(&step) {
                    bar.finish_and_clear();
                    self.multi.remove(&bar);
                }
                if let Some(at) = self.asking.iter().position(|s| *s == step) {
                    self.asking.remove(at);
                    if self.asking.is_empty() {
                        self.multi.set_draw_target(ProgressDrawTarget::stdout());
                    }
                }
                if section == Section::OnFailure && status != StepStatus::Skipped {
                    self.on_failure_ran.push(step.clone());
                }
                if section == Section::Steps && status == StepStatus::Skipped {
                    self.skipped.push((step.clone(), summary.clone()));
                }
                let mark = match status {
                    StepStatus::Succeeded => style("✓").green().bold(),
                    StepStatus::Failed if continued => style("!").yellow().bold(),
                    StepStatus::Failed => style("✗").red().bold(),
                    StepStatus::Skipped | StepStatus::Cancelled => style("-").dim(),
                };
                let duration = if status == StepStatus::Skipped || status == StepStatus::Cancelled {
                    String::new()
                } else {
                    fmt_ms(duration_ms)
                };
                let summary = match status {
                    StepStatus::Failed => style(summary).red().to_string(),
                    StepStatus::Skipped => style(summary).dim().to_string(),
                    StepStatus::Cancelled => style("cancelled").dim().to_string(),
                    StepStatus::Succeeded => summary,
                };
                self.print(format!(
                    "{mark} {:<w$}  {:>7}  {summary}",
                    name,
                    style(duration).dim(),
                    w = self.width
                ));
            }
            Event::RunFinished {
                status,
                duration_ms,
                failed_steps,
                ..
            } => {
                let took = fmt_ms(duration_ms);
                let line = match status {
                    RunOutcome::Succeeded => {
                        format!(
                            "{} succeeded in {took}{}",
                            style("✓").green().bold(),
                            self.skipped_note()
                        )
                    }
                    RunOutcome::Cancelled => {
                        format!("{} cancelled after {took}", style("✗").red().bold())
                    }
                    RunOutcome::Failed => {
                        let mut line = format!("{} failed in {took}", style("✗").red().bold());
                        if !failed_steps.is_empty() {
                            line.push_str(&format!(": {} failed", failed_steps.join(", ")));
                        }
                        if !self.on_failure_ran.is_empty() {
                            line.push_str(&format!(
                                "; on_failure ran {}",
                                self.on_failure_ran.join(", ")
                            ));
                        }
                        line
                    }
                };
                self.print(line);
            }
        }
    }
}

impl Human {
    /// After a success with skipped steps: what did not happen. When every step that can
    /// change something was skipped, the run must not look like a deploy happened.
    fn skipped_note(&self) -> String {
        if self.skipped.is_empty() {
            return String::new();
        }
        let list = self
            .skipped
            .iter()
            .map(|(id, summary)| {
                let why = summary.strip_prefix("skipped: ").unwrap_or(summary);
                format!("`{id}` skipped because {why}")
            })
            .collect::<Vec<_>>()
            .join("; ");
        let all_changers_skipped = !self.changers.is_empty()
            && self
                .changers
                .iter()
                .all(|c| self.skipped.iter().any(|(id, _)| id == c));
        if all_changers_skipped {
            format!(
                ", {}: {list}",
                style("but nothing was deployed or changed").yellow().bold()
            )
        } else {
            format!(" ({list})")
        }
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.1}s", ms / 1000.0)
    }
}

/// `shiphat plugin inspect`, as text.
pub fn inspect(
    info: &PluginInfo,
    digest: &str,
    schema: &serde_json::Value,
    imports: &[String],
    exports: &[String],
) {
    outln!("{} {}", style(&info.name).bold(), info.version);
    outln!("{}", info.description);
    outln!();
    outln!("uses: {}@sha256:{digest}", info.name);
    outln!();
    outln!("with:");
    match schema.get("properties").and_then(|p| p.as_object()) {
        Some(props) if !props.is_empty() => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            for (key, prop) in props {
                let ty = prop
                    .get("type")
                    .map(|t| t.to_string().replace('"', ""))
                    .unwrap_or_default();
                let req = if required.contains(&key.as_str()) {
                    " (required)"
                } else {
                    ""
                };
                let desc = prop
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("");
                outln!("  {key}: {ty}{req}  {}", style(desc).dim());
            }
        }
        _ => outln!("  (no keys)"),
    }
    outln!();
    outln!("imports:");
    for import in imports {
        outln!("  {import}");
    }
    outln!("exports:");
    for export in exports {
        outln!("  {export}");
    }
}
