//! What `shiphat` prints: the live human view of a run, JSON Lines events, and errors.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use shiphat_host::PluginInfo;
use shiphat_runner::{Event, RunStatus, Section, StepStatus};
use shiphat_workflow::Workflow;

use crate::Sink;

/// Prints an error and its causes to stderr.
pub fn error(e: &anyhow::Error) {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    eprintln!("{} {text}", style("error:").red().bold());
}

/// A line of information on stderr.
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// Writes every event as one JSON line on stdout.
pub fn json_sink() -> Sink {
    let out = Mutex::new(std::io::stdout());
    Arc::new(move |event: Event| {
        let line = serde_json::to_string(&event).expect("events always serialise");
        let mut out = out.lock().unwrap();
        // A closed stdout (`| head`) is not worth failing the run over.
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
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
    let state = Mutex::new(Human {
        multi,
        live,
        width,
        bars: HashMap::new(),
        on_failure_ran: Vec::new(),
    });
    Arc::new(move |event| state.lock().unwrap().event(event))
}

struct Human {
    multi: MultiProgress,
    live: bool,
    width: usize,
    bars: HashMap<String, ProgressBar>,
    on_failure_ran: Vec<String>,
}

impl Human {
    fn print(&self, line: String) {
        if self.live {
            let _ = self.multi.println(line);
        } else {
            println!("{line}");
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
                    "error" => style(text).red().to_string(),
                    "warn" => style(text).yellow().to_string(),
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
                if section == Section::OnFailure && status != StepStatus::Skipped {
                    self.on_failure_ran.push(step.clone());
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
                    StepStatus::Skipped => style("skipped").dim().to_string(),
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
                    RunStatus::Succeeded => {
                        format!("{} succeeded in {took}", style("✓").green().bold())
                    }
                    RunStatus::Cancelled => {
                        format!("{} cancelled after {took}", style("✗").red().bold())
                    }
                    RunStatus::Failed => {
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
    println!("{} {}", style(&info.name).bold(), info.version);
    println!("{}", info.description);
    println!();
    println!("uses: {}@sha256:{digest}", info.name);
    println!();
    println!("with:");
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
                println!("  {key}: {ty}{req}  {}", style(desc).dim());
            }
        }
        _ => println!("  (no keys)"),
    }
    println!();
    println!("imports:");
    for import in imports {
        println!("  {import}");
    }
    println!("exports:");
    for export in exports {
        println!("  {export}");
    }
}
