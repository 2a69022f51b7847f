//! `run`'s options from a file: `DIR/tillmesh.toml`, or the file `--config` names.
//!
//! A service is started with the same command every time, so what differs between shops (the
//! API address, the peers, the relay) lives in a file beside the store. Each key is one of
//! `run`'s long flags, spelt the same (`api`, `peer`, `no-mdns`, `rights-reserve` ...), so the
//! flags' help is the file's documentation and a new flag is a new key with no code here. A
//! flag on the command line (or its environment variable) wins over the file; a key the file
//! should not have is refused by name, since a misspelt key silently ignored is a shop
//! running with a setting nobody chose.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;

/// The file `run` reads from the data folder when `--config` names none.
pub const CONFIG_FILE: &str = "tillmesh.toml";
/// Larger than any sensible configuration: a file this big is not one.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the config file {path} is over {CONFIG_BYTES_MAX} bytes; it holds `run`'s options only"
    )]
    TooLarge { path: String },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error(
        "the config file {path} has an unknown key `{key}`; its keys are `run`'s long flags: {known}"
    )]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("the config file {path}: `{key}` must be {expected}")]
    BadValue {
        path: String,
        key: String,
        expected: &'static str,
    },
}

/// `args` with the config file's options added for each option of `subcommand` the command line
/// does not set. Arguments that do not parse are returned as they are, for the parser to say
/// what is wrong with them.
pub fn with_config_file(
    cli: &clap::Command,
    subcommand: &str,
    args: Vec<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let Ok(matches) = cli.clone().try_get_matches_from(&args) else {
        return Ok(args);
    };
    let Some((name, sub)) = matches.subcommand() else {
        return Ok(args);
    };
    if name != subcommand {
        return Ok(args);
    }
    let path = match sub.get_one::<PathBuf>("config") {
        Some(p) => p.clone(),
        None => match matches.get_one::<PathBuf>("data") {
            Some(dir) if dir.join(CONFIG_FILE).is_file() => dir.join(CONFIG_FILE),
            _ => return Ok(args),
        },
    };
    let table = read(&path)?;
    let command = cli
        .find_subcommand(subcommand)
        .expect("the subcommand parsed, so it exists");
    let mut args = args;
    args.extend(flags(&path, command, sub, &table)?);
    Ok(args)
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let shown = path.display().to_string();
    let read_err = |source| ConfigError::Read {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > CONFIG_BYTES_MAX {
        return Err(ConfigError::TooLarge { path: shown });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax {
            path: shown.clone(),
            message: e.to_string().trim().to_owned(),
        })
}

/// The flags `table` stands for, skipping those the command line already gave.
fn flags(
    path: &Path,
    command: &clap::Command,
    given: &clap::ArgMatches,
    table: &toml::Table,
) -> Result<Vec<OsString>, ConfigError> {
    let settable = || {
        command
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "config" && l != "help"))
    };
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(arg) = settable().find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<&str> = settable().filter_map(|a| a.get_long()).collect();
            return Err(ConfigError::UnknownKey {
                path: path.display().to_string(),
                key: key.clone(),
                known: known.join(", "),
            });
        };
        if matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let bad = |expected| ConfigError::BadValue {
            path: path.display().to_string(),
            key: key.clone(),
            expected,
        };
        let flag = format!("--{key}");
        match arg.get_action() {
            clap::ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => out.push(flag.into()),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("true or false")),
            },
            clap::ArgAction::Append => {
                let items = match value {
                    toml::Value::Array(items) => items.iter().collect(),
                    one => vec![one],
                };
                for item in items {
                    let text = scalar(item).ok_or_else(|| bad("a list of strings or numbers"))?;
                    out.push(format!("{flag}={text}").into());
                }
            }
            _ => {
                let text = scalar(value).ok_or_else(|| bad("a string or a number"))?;
                out.push(format!("{flag}={text}").into());
            }
        }
    }
    Ok(out)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn cli() -> Command {
        Command::new("t")
            .arg(
                Arg::new("data")
                    .long("data")
                    .global(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            )
            .subcommand(
                Command::new("run")
                    .arg(
                        Arg::new("config")
                            .long("config")
                            .value_parser(clap::value_parser!(PathBuf)),
                    )
                    .arg(Arg::new("api").long("api").default_value("127.0.0.1:7420"))
                    .arg(Arg::new("peers").long("peer").action(ArgAction::Append))
                    .arg(
                        Arg::new("no_mdns")
                            .long("no-mdns")
                            .action(ArgAction::SetTrue),
                    )
                    .arg(
                        Arg::new("reserve")
                            .long("rights-reserve")
                            .default_value("10"),
                    ),
            )
    }

    fn run_with(file: &str, extra: &[&str]) -> Result<Vec<String>, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), file).unwrap();
        let mut args: Vec<OsString> = vec!["t".into(), "--data".into(), dir.path().into()];
        args.push("run".into());
        args.extend(extra.iter().map(OsString::from));
        let n = args.len();
        let out = with_config_file(&cli(), "run", args)?;
        Ok(out[n..]
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn every_key_becomes_its_flag() {
        let added = run_with(
            "api = \"127.0.0.1:9000\"\npeer = [\"/ip4/10.0.0.1/tcp/7421\", \"/ip4/10.0.0.2/tcp/7421\"]\nno-mdns = true\nrights-reserve = 3\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            added,
            [
                "--api=127.0.0.1:9000",
                "--no-mdns",
                "--peer=/ip4/10.0.0.1/tcp/7421",
                "--peer=/ip4/10.0.0.2/tcp/7421",
                "--rights-reserve=3"
            ]
        );
    }

    #[test]
    fn a_flag_wins_over_the_file() {
        let added = run_with(
            "api = \"127.0.0.1:9000\"\nno-mdns = false\n",
            &["--api", "127.0.0.1:9001"],
        )
        .unwrap();
        assert!(added.is_empty(), "{added:?}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = run_with("api = \"127.0.0.1:9000\"\nmdsn = false\n", &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("unknown key `mdsn`"), "{text}");
        assert!(text.contains("no-mdns"), "{text}");
        let e = run_with("config = \"x\"\n", &[]).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownKey { .. }), "{e}");
    }

    #[test]
    fn a_wrong_value_or_bad_toml_says_so() {
        let e = run_with("no-mdns = \"yes\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("`no-mdns` must be true or false"),
            "{e}"
        );
        let e = run_with("api = [1\n", &[]).unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn no_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<OsString> =
            vec!["t".into(), "--data".into(), dir.path().into(), "run".into()];
        assert_eq!(with_config_file(&cli(), "run", args.clone()).unwrap(), args);
        let missing: Vec<OsString> = vec![
            "t".into(),
            "run".into(),
            "--config".into(),
            dir.path().join("nope.toml").into(),
        ];
        assert!(matches!(
            with_config_file(&cli(), "run", missing),
            Err(ConfigError::Read { .. })
        ));
    }
}
