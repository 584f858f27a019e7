//! How every Serval command reports a usage error.
//!
//! DESIGN.md's contract: every error a user can cause gets one clear line
//! and a non-zero exit. clap's own report is several lines (the error, a
//! usage block, a pointer to `--help`), so each command parses through
//! [`parse`] instead: help and version print as clap prints them, a
//! command given without what it needs prints its help (status 2), and a
//! real mistake becomes one line on stderr, `name: what is wrong`, status 2.
//! Runtime failures are the commands' own business; [`one_line`] keeps a
//! message that may have come from elsewhere (sald, the kernel) on one
//! line for them too.

#![warn(missing_docs)]

use clap::error::ErrorKind;
use clap::Parser;

/// Exit status of a usage error, as clap and most Unix tools use.
pub const USAGE_STATUS: i32 = 2;

/// Parses the process's arguments as `P`; on a usage error reports it the
/// Serval way (see the crate docs) and exits.
pub fn parse<P: Parser>(program: &str) -> P {
    match P::try_parse() {
        Ok(parsed) => parsed,
        Err(error) => {
            let status = report(program, &error);
            std::process::exit(status)
        }
    }
}

/// Prints `error` the Serval way and returns the exit status it calls for:
/// 0 for help and version (printed to stdout by clap), 2 otherwise.
pub fn report(program: &str, error: &clap::Error) -> i32 {
    match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            USAGE_STATUS
        }
        _ => {
            eprintln!("{}", usage_line(program, error));
            USAGE_STATUS
        }
    }
}

/// The one line a usage error becomes: the program's name, clap's message,
/// clap's tip or the list of subcommands if it gave one, and a pointer to
/// `--help` unless the mistake was a value (whose message already says
/// what is wrong with it).
pub fn usage_line(program: &str, error: &clap::Error) -> String {
    let text = error.to_string();
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("invalid usage");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut extra = String::new();
    for line in lines.map(str::trim) {
        if let Some(tip) = line.strip_prefix("tip: ") {
            extra = format!(" ({tip})");
        } else if let Some(list) = line
            .strip_prefix("[subcommands: ")
            .and_then(|l| l.strip_suffix(']'))
        {
            extra = format!(" (one of: {list})");
        }
    }
    let hint = match error.kind() {
        ErrorKind::ValueValidation | ErrorKind::InvalidValue => String::new(),
        _ => format!("; see '{program} --help'"),
    };
    format!("{program}: {}{extra}{hint}", one_line(first))
}

/// `text` with every run of white space, line breaks included, made one
/// space: a message from elsewhere kept to one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    #[derive(Debug, Parser)]
    #[command(name = "demo")]
    struct Cli {
        #[arg(long)]
        count: Option<u32>,
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Debug, Subcommand)]
    enum Command {
        Listen,
        Connect { service: String },
    }

    fn error(args: &[&str]) -> clap::Error {
        Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
            .expect_err("a usage error")
    }

    #[test]
    fn a_bad_value_is_one_line_that_names_it_and_no_pointer_to_help() {
        let line = usage_line("demo", &error(&["--count", "many", "listen"]));
        assert_eq!(
            line,
            "demo: invalid value 'many' for '--count <COUNT>': invalid digit found in string"
        );
    }

    #[test]
    fn an_unknown_flag_keeps_clap_s_tip_and_points_to_help() {
        let line = usage_line("demo", &error(&["listen", "--bogus"]));
        assert!(
            line.starts_with("demo: unexpected argument '--bogus' found"),
            "{line}"
        );
        assert!(line.ends_with("; see 'demo --help'"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_misspelt_subcommand_gets_clap_s_suggestion() {
        let line = usage_line("demo", &error(&["conect", "ab"]));
        assert_eq!(
            line,
            "demo: unrecognized subcommand 'conect' (a similar subcommand exists: 'connect'); \
             see 'demo --help'"
        );
    }

    #[test]
    fn help_is_not_an_error_and_a_missing_subcommand_shows_help() {
        assert_eq!(error(&["--help"]).kind(), ErrorKind::DisplayHelp);
        assert_eq!(
            error(&[]).kind(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        );
    }

    #[test]
    fn one_line_joins_lines_and_spaces() {
        assert_eq!(one_line(" a\n  b\tc \n"), "a b c");
    }
}
