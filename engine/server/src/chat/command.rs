//! The `/deploy` command language: `APP[@REF] to ENV`, `status [APP]`, `lock APP in ENV
//! REASON`, `unlock APP in ENV`, `rollback APP in ENV`, `approve RUN[/STEP] [COMMENT]`,
//! `reject RUN[/STEP] [REASON]`, `help`.

use shiphat_protocol::Choice;

/// A parsed `/deploy` command.
#[derive(Debug, PartialEq)]
pub enum Command {
    Deploy {
        app: String,
        git_ref: Option<String>,
        environment: String,
    },
    Status {
        app: Option<String>,
    },
    Lock {
        app: String,
        environment: String,
        reason: String,
    },
    Unlock {
        app: String,
        environment: String,
    },
    Rollback {
        app: String,
        environment: String,
    },
    /// Why a run is where it is (`shiphat_protocol::why`).
    Why {
        run: String,
    },
    /// A decision on the approval a run waits at (`step` names one when it waits at several).
    Decide {
        run: String,
        step: Option<String>,
        decision: Choice,
        comment: String,
    },
    Help,
}

/// Every form, as `/deploy help` shows it and every parse error repeats it.
pub const USAGE: &str = "\
`/deploy APP[@REF] to ENVIRONMENT`: deploy (e.g. `/deploy web@v1.2 to staging`)
`/deploy status [APP]`: what is running, queued and last deployed where
`/deploy lock APP in ENVIRONMENT REASON` and `/deploy unlock APP in ENVIRONMENT`
`/deploy rollback APP in ENVIRONMENT`: run the app's rollback workflow
`/deploy why RUN`: who started it, what it waited for, what failed and what the rollback did
`/deploy approve RUN [COMMENT]` and `/deploy reject RUN [REASON]`: decide on the approval a run waits at (`RUN/STEP` names the step)
`/deploy help`: this";

/// Parses the text after `/deploy`; an error says which form was meant and how it goes.
pub fn parse(text: &str) -> Result<Command, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let form = |form: &str| format!("that is not a `/deploy` command I know; the form is `{form}`");
    match words.as_slice() {
        [] | ["help"] => Ok(Command::Help),
        ["status"] => Ok(Command::Status { app: None }),
        ["status", app] => Ok(Command::Status {
            app: Some((*app).to_owned()),
        }),
        ["status", ..] => Err(form("/deploy status [APP]")),
        ["lock", app, "in", env, reason @ ..] if !reason.is_empty() => Ok(Command::Lock {
            app: (*app).to_owned(),
            environment: (*env).to_owned(),
            reason: reason.join(" "),
        }),
        ["lock", ..] => Err(form("/deploy lock APP in ENVIRONMENT REASON")),
        ["unlock", app, "in", env] => Ok(Command::Unlock {
            app: (*app).to_owned(),
            environment: (*env).to_owned(),
        }),
        ["unlock", ..] => Err(form("/deploy unlock APP in ENVIRONMENT")),
        ["rollback", app, "in", env] => Ok(Command::Rollback {
            app: (*app).to_owned(),
            environment: (*env).to_owned(),
        }),
        ["rollback", ..] => Err(form("/deploy rollback APP in ENVIRONMENT")),
        [verb @ ("approve" | "reject"), target, comment @ ..] => {
            let (run, step) = match target.split_once('/') {
                Some((run, step)) if !run.is_empty() && !step.is_empty() => {
                    (run, Some(step.to_owned()))
                }
                Some(_) => return Err(form(&format!("/deploy {verb} RUN[/STEP]"))),
                None => (*target, None),
            };
            Ok(Command::Decide {
                run: run.to_owned(),
                step,
                decision: if *verb == "approve" {
                    Choice::Approve
                } else {
                    Choice::Reject
                },
                comment: comment.join(" "),
            })
        }
        ["why", run] => Ok(Command::Why {
            run: (*run).to_owned(),
        }),
        ["why", ..] => Err(form("/deploy why RUN")),
        ["approve"] => Err(form("/deploy approve RUN [COMMENT]")),
        ["reject"] => Err(form("/deploy reject RUN [REASON]")),
        [target, "to", env] => {
            let (app, git_ref) = match target.split_once('@') {
                Some((app, r)) if !app.is_empty() && !r.is_empty() => (app, Some(r.to_owned())),
                Some(_) => return Err(form("/deploy APP[@REF] to ENVIRONMENT")),
                None => (*target, None),
            };
            Ok(Command::Deploy {
                app: app.to_owned(),
                git_ref,
                environment: (*env).to_owned(),
            })
        }
        _ => Err(format!(
            "I did not understand that. The forms are:\n{USAGE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse("web@v1.2 to staging"),
            Ok(Command::Deploy {
                app: "web".into(),
                git_ref: Some("v1.2".into()),
                environment: "staging".into()
            })
        );
        assert_eq!(
            parse(" lock web in prod  release freeze "),
            Ok(Command::Lock {
                app: "web".into(),
                environment: "prod".into(),
                reason: "release freeze".into()
            })
        );
        assert_eq!(parse(""), Ok(Command::Help));
        assert_eq!(parse("status"), Ok(Command::Status { app: None }));
        assert!(parse("lock web in prod").unwrap_err().contains("REASON"));
        assert!(parse("web@ to prod").unwrap_err().contains("APP[@REF]"));
        assert!(parse("ship it").unwrap_err().contains("/deploy status"));
        assert_eq!(
            parse("reject r-1 not on a Friday"),
            Ok(Command::Decide {
                run: "r-1".into(),
                step: None,
                decision: Choice::Reject,
                comment: "not on a Friday".into()
            })
        );
        assert_eq!(
            parse("approve r-1/decide"),
            Ok(Command::Decide {
                run: "r-1".into(),
                step: Some("decide".into()),
                decision: Choice::Approve,
                comment: String::new()
            })
        );
        assert!(parse("approve").unwrap_err().contains("approve RUN"));
        assert_eq!(
            parse("why 01abc"),
            Ok(Command::Why {
                run: "01abc".into()
            })
        );
        assert!(parse("why").unwrap_err().contains("/deploy why RUN"));
        assert!(parse("reject r-1/ why").unwrap_err().contains("RUN[/STEP]"));
    }
}
