//! `scan-gateway wait <duration>`: waits, then exits 0. The Helm chart's preStop hook runs it
//! below Kubernetes 1.30, which has no native sleep action, because the runtime image has no
//! shell and so no `sleep`.

use std::{process::ExitCode, time::Duration};

#[derive(Debug, clap::Args)]
pub struct WaitArgs {
    /// How long to wait, as the other durations are written (e.g. 5s, 1m30s, 250ms).
    #[arg(value_parser = humantime::parse_duration)]
    duration: Duration,
}

/// A duration clap could not parse never gets here: clap prints why and exits 2.
pub async fn run(args: WaitArgs) -> ExitCode {
    tokio::time::sleep(args.duration).await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio::time::Instant;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<WaitArgs, clap::Error> {
        let cli = Cli::try_parse_from(["scan-gateway", "wait"].iter().chain(args))?;
        match cli.command {
            Command::Wait(args) => Ok(args),
            other => panic!("`wait` parsed as {other:?}"),
        }
    }

    #[test]
    fn wait_reads_humantime_durations() {
        for (text, expected) in [
            ("5s", Duration::from_secs(5)),
            ("1m30s", Duration::from_secs(90)),
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
        ] {
            assert_eq!(parse(&[text]).unwrap().duration, expected, "{text}");
        }
    }

    #[test]
    fn wait_refuses_bad_durations_with_exit_code_2() {
        for args in [
            &["5 parsecs"][..],
            &["5"],
            &["soon"],
            &["-5s"],
            &["99999999999999999999y"],
            &[],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} accepted"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
        let err = parse(&["5 parsecs"]).unwrap_err().to_string();
        assert!(
            err.contains("invalid value '5 parsecs' for '<DURATION>'"),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_success_after_the_duration() {
        let started = Instant::now();
        let code = run(parse(&["5s"]).unwrap()).await;
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
