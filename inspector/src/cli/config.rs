//! `--config FILE`: a TOML file for everything the flags set; flags on the command line
//! override it. `synscope check-config FILE` validates one.
//!
//! A key is a long flag without its dashes, `_` or `-` alike (`syn_timeout = 3` is
//! `--syn-timeout 3`); `true` sets a switch (`false` leaves it off). Top-level keys apply to
//! every command that has that flag; `[live]` and `[pcap]` tables only to that command:
//!
//! ```toml
//! metrics = "127.0.0.1:9464"
//! syn_timeout = 3
//! [live]
//! iface = "eth0"
//! workers = 4
//! evidence = "/var/lib/synscope/evidence"
//! ```
//!
//! The file becomes flags placed before the command line's own, so the command line wins
//! (clap's `args_override_self`), and every value goes through the same validation as a
//! flag. Errors name the file, the line and the key.

use std::{fmt, path::Path};

use clap::CommandFactory;

use super::Cli;

/// Commands a config file can configure (tables of the same name).
pub const COMMANDS: [&str; 2] = ["live", "pcap"];

/// What is wrong with a config file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(l) = self.line {
            write!(f, ":{l}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.msg)
    }
}

impl std::error::Error for ConfigError {}

/// A parsed config file.
pub struct ConfigFile {
    file: String,
    text: String,
    table: toml::Table,
}

/// The long flags of `command`, without dashes, except `config` itself.
fn flags_of(command: &str) -> Vec<String> {
    Cli::command()
        .find_subcommand(command)
        .map(|c| {
            c.get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "config")
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl ConfigFile {
    /// Reads and parses `path` (TOML syntax errors carry their line).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            msg: format!("cannot read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Parses `text` (named `file` in errors).
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            ConfigError {
                file: file.to_owned(),
                line,
                key: None,
                msg: format!("not valid TOML: {}", e.message()),
            }
        })?;
        let cfg = Self {
            file: file.to_owned(),
            text: text.to_owned(),
            table,
        };
        cfg.check_keys()?;
        Ok(cfg)
    }

    fn err(&self, table: Option<&str>, key: &str, msg: String) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line_of(table, key),
            key: Some(table.map_or_else(|| key.to_owned(), |t| format!("{t}.{key}"))),
            msg,
        }
    }

    /// The line of `key` in `table` (None: top level), found in the text.
    fn line_of(&self, table: Option<&str>, key: &str) -> Option<usize> {
        let mut current: Option<String> = None;
        for (i, line) in self.text.lines().enumerate() {
            let l = line.trim();
            if let Some(h) = l.strip_prefix('[').and_then(|h| h.split(']').next()) {
                current = Some(h.trim().to_owned());
                continue;
            }
            let k = l.split('=').next().unwrap_or("").trim().trim_matches('"');
            if l.contains('=') && k == key && current.as_deref() == table {
                return Some(i + 1);
            }
        }
        None
    }

    /// Every key names a flag: of some command at the top level, of its command in a table.
    fn check_keys(&self) -> Result<(), ConfigError> {
        let known: Vec<(&str, Vec<String>)> = COMMANDS.iter().map(|c| (*c, flags_of(c))).collect();
        for (key, value) in &self.table {
            if let Some((cmd, flags)) = known.iter().find(|(c, _)| c == key) {
                let toml::Value::Table(t) = value else {
                    return Err(self.err(None, key, format!("`{key}` must be a table: [{key}]")));
                };
                for k in t.keys() {
                    if !flags.contains(&k.replace('_', "-")) {
                        return Err(self.err(
                            Some(cmd),
                            k,
                            format!("`synscope {cmd}` has no flag --{}", k.replace('_', "-")),
                        ));
                    }
                }
            } else if !known
                .iter()
                .any(|(_, f)| f.contains(&key.replace('_', "-")))
            {
                return Err(self.err(
                    None,
                    key,
                    "no command has this flag (see `synscope live --help`, `synscope pcap --help`)"
                        .to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// The file's settings for `command` as flags, each value checked by clap on its own so
    /// that an error names its key and line.
    pub fn args_for(&self, command: &str) -> Result<Vec<String>, ConfigError> {
        let flags = flags_of(command);
        let top = self
            .table
            .iter()
            .filter(|(k, v)| !COMMANDS.contains(&k.as_str()) && !v.is_table())
            .filter(|(k, _)| flags.contains(&k.replace('_', "-")))
            .map(|(k, v)| (None, k, v));
        let own = self
            .table
            .get(command)
            .and_then(toml::Value::as_table)
            .into_iter()
            .flatten()
            .map(|(k, v)| (Some(command), k, v));
        let mut args = Vec::new();
        for (table, key, value) in top.chain(own) {
            let flag = format!("--{}", key.replace('_', "-"));
            let one = match value {
                toml::Value::String(s) => vec![flag, s.clone()],
                toml::Value::Integer(i) => vec![flag, i.to_string()],
                toml::Value::Float(f) => vec![flag, f.to_string()],
                toml::Value::Boolean(true) => vec![flag],
                toml::Value::Boolean(false) => vec![],
                other => {
                    return Err(self.err(
                        table,
                        key,
                        format!(
                            "expected a string, number or boolean, found {}",
                            other.type_str()
                        ),
                    ));
                }
            };
            validate(command, &one).map_err(|msg| self.err(table, key, msg))?;
            args.extend(one);
        }
        Ok(args)
    }
}

/// Parses `synscope COMMAND ARGS` with placeholders for what the command requires, and
/// returns clap's complaint about ARGS, if any.
fn validate(command: &str, args: &[String]) -> Result<(), String> {
    let mut argv: Vec<String> = vec!["synscope".into(), command.into()];
    argv.extend(args.iter().cloned());
    match command {
        "live" if !args.iter().any(|a| a == "--iface") => {
            argv.extend(["--iface".into(), "placeholder".into()])
        }
        "pcap" => argv.push("placeholder.pcap".into()),
        _ => {}
    }
    match Cli::command().try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(e
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or("invalid value")
            .trim_start_matches("error: ")
            .to_owned()),
    }
}

/// The command line with a `--config FILE` of `live` or `pcap` expanded: the file's flags go
/// right after the command name, before the command line's own (which therefore win).
pub fn expand(argv: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let Some(cmd_at) = argv.iter().position(|a| COMMANDS.contains(&a.as_str())) else {
        return Ok(argv);
    };
    let path = argv[cmd_at + 1..].iter().enumerate().find_map(|(i, a)| {
        if a == "--config" {
            argv.get(cmd_at + 2 + i).cloned()
        } else {
            a.strip_prefix("--config=").map(str::to_owned)
        }
    });
    let Some(path) = path else {
        return Ok(argv);
    };
    let cfg = ConfigFile::load(Path::new(&path))?;
    let extra = cfg.args_for(&argv[cmd_at])?;
    let mut out = argv[..=cmd_at].to_vec();
    out.extend(extra);
    out.extend(argv[cmd_at + 1..].iter().cloned());
    Ok(out)
}

/// `synscope check-config FILE`: the flags the file gives each command.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let cfg = ConfigFile::load(path)?;
    let mut s = format!("{}: ok\n", path.display());
    for c in COMMANDS {
        let args = cfg.args_for(c)?;
        s.push_str(&format!("  synscope {c} {}\n", args.join(" ")));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str, cmd: &str) -> Result<Vec<String>, String> {
        ConfigFile::parse("t.toml", text)
            .and_then(|c| c.args_for(cmd))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_become_flags_for_the_commands_that_have_them() {
        let text = "syn_timeout = 2.5\nmetrics = \"127.0.0.1:9464\"\n[live]\niface = \"eth0\"\nworkers = 2\nno-egress = true\nforce = false\n";
        assert_eq!(
            args(text, "live").unwrap(),
            [
                "--metrics",
                "127.0.0.1:9464",
                "--syn-timeout",
                "2.5",
                "--iface",
                "eth0",
                "--no-egress",
                "--workers",
                "2"
            ]
        );
        assert_eq!(
            args(text, "pcap").unwrap(),
            ["--metrics", "127.0.0.1:9464", "--syn-timeout", "2.5"]
        );
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        for (text, cmd, want) in [
            (
                "syn_timeout = 3\n[live]\nworkers = 99\n",
                "live",
                "t.toml:3: key `live.workers`: invalid value '99' for '--workers <N>': 99 is not in 1..=16",
            ),
            (
                "\n[live]\nifcae = \"eth0\"\n",
                "live",
                "t.toml:3: key `live.ifcae`: `synscope live` has no flag --ifcae",
            ),
            (
                "colour = 1\n",
                "live",
                "t.toml:1: key `colour`: no command has this flag (see `synscope live --help`, `synscope pcap --help`)",
            ),
            (
                "[pcap]\nmax_flows = [1]\n",
                "pcap",
                "t.toml:2: key `pcap.max_flows`: expected a string, number or boolean, found array",
            ),
        ] {
            assert_eq!(args(text, cmd).unwrap_err(), want);
        }
        let syntax = args("[live\nworkers = 2\n", "live").unwrap_err();
        assert!(syntax.starts_with("t.toml:1: not valid TOML"), "{syntax}");
    }

    #[test]
    fn the_command_line_goes_after_the_file_and_wins() {
        let dir = std::env::temp_dir().join(format!("synscope-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(&f, "[live]\niface = \"eth0\"\nworkers = 2\n").unwrap();
        let argv: Vec<String> = [
            "synscope",
            "live",
            "--config",
            f.to_str().unwrap(),
            "--workers",
            "3",
        ]
        .map(String::from)
        .to_vec();
        let out = expand(argv).unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(
            &Cli::command().try_get_matches_from(&out).unwrap(),
        )
        .unwrap();
        let super::super::Command::Live(l) = cli.command else {
            panic!("live")
        };
        assert_eq!((l.iface.as_str(), l.workers), ("eth0", Some(3)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
