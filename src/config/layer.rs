//! A layer of settings (flags and environment, the file, the defaults): the `settings!` macro
//! that declares every setting once, and what it needs: defaults shown and parsed through clap,
//! the file read through serde, and the checks a declaration can name.

use std::{path::Path, time::Duration};

use clap::{Arg, Args, Command, FromArgMatches};
use serde::de::DeserializeOwned;

use super::ConfigError;

/// Declares the settings once, as one struct whose fields are all `Option<T>`:
///
/// - the doc comment is the help, `#[arg(long, env = ..)]` the flag and environment variable
///   (clap: the flag wins over the variable), and the field name the file key (serde);
/// - `= DEFAULT` after the type is the default, a string parsed by the flag's own parser and
///   shown in `--help`;
/// - `, check = F` refuses a value: `F(&T)` returns `Err(reason)`.
///
/// It generates the merge `or` (each setting from the higher layer, else the lower one), the
/// `defaults()` layer, and `resolve()`, which fills in the defaults and runs the checks into
/// the struct named after `=>`, where a setting with a default is no longer optional.
macro_rules! settings {
    (@value $ty:ty, $default:expr) => { $ty };
    (@value $ty:ty) => { Option<$ty> };
    (@take $value:expr, $default:expr) => {
        $value.expect("the defaults layer sets every setting declared with a default")
    };
    (@take $value:expr) => { $value };
    (
        $(#[$meta:meta])*
        pub struct $name:ident => $values:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident: Option<$ty:ty> $(= $default:expr)? $(, check = $check:expr)?,
            )*
        }
    ) => {
        $(#[$meta])*
        #[command(mut_args = |arg| $crate::config::layer::show_default(arg, Self::DEFAULTS))]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: Option<$ty>, )*
        }

        /// Every setting after the merge, checked; one with a default is always set.
        #[derive(Debug)]
        pub struct $values {
            $( pub $field: settings!(@value $ty $(, $default)?), )*
        }

        impl $name {
            /// The declared defaults, by setting.
            pub const DEFAULTS: &'static [(&'static str, &'static str)] =
                &[$($((stringify!($field), $default),)?)*];

            /// The merge: each setting from `self`, else from `lower`.
            pub fn or(self, lower: Self) -> Self {
                Self { $( $field: self.$field.or(lower.$field), )* }
            }

            /// The lowest layer: every declared default.
            pub fn defaults() -> Self {
                $crate::config::layer::defaults(Self::DEFAULTS)
            }

            /// Fills in the defaults, then checks each setting.
            pub fn resolve(self) -> Result<$values, $crate::config::ConfigError> {
                let merged = self.or(Self::defaults());
                $($(
                    if let Some(value) = &merged.$field {
                        ($check)(value).map_err(|reason: String| {
                            $crate::config::ConfigError::invalid(stringify!($field), reason)
                        })?;
                    }
                )?)*
                Ok($values { $( $field: settings!(@take merged.$field $(, $default)?), )* })
            }
        }
    };
}

pub(crate) use settings;

fn default_of(defaults: &'static [(&str, &'static str)], arg: &Arg) -> Option<&'static str> {
    defaults
        .iter()
        .find(|(id, _)| arg.get_id() == *id)
        .map(|&(_, default)| default)
}

/// Appends ` [default: ..]` to a setting's help. Not clap's `default_value`: clap would then set
/// the value itself, above the file.
pub fn show_default(arg: Arg, defaults: &'static [(&str, &'static str)]) -> Arg {
    let Some(default) = default_of(defaults, &arg) else {
        return arg;
    };
    let with_default = |help: &clap::builder::StyledStr| format!("{help} [default: {default}]");
    let help = arg.get_help().map(with_default);
    let long_help = arg.get_long_help().map(with_default);
    let arg = match help {
        Some(help) => arg.help(help),
        None => arg,
    };
    match long_help {
        Some(long_help) => arg.long_help(long_help),
        None => arg,
    }
}

/// The defaults as a layer, each parsed as if typed after its flag (the environment unread).
pub fn defaults<A: Args + FromArgMatches>(defaults: &'static [(&str, &'static str)]) -> A {
    let command = A::augment_args(Command::new("defaults")).mut_args(|arg| {
        let default = default_of(defaults, &arg);
        arg.env(None).default_value(default)
    });
    command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| A::from_arg_matches(&matches))
        .expect("every declared default parses (checked by the config tests)")
}

/// What errors call a setting: its environment variable, else its file key.
pub fn name_of<A: Args>(id: &str) -> String {
    A::augment_args(Command::new("settings"))
        .get_arguments()
        .find(|arg| arg.get_id() == id)
        .and_then(Arg::get_env)
        .map_or_else(|| id.to_owned(), |env| env.to_string_lossy().into_owned())
}

/// The file layer. Unknown keys are an error (a typo must not silently fall back to a default).
pub fn read_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::File {
        path: path.to_owned(),
        reason: err.to_string(),
    })?;
    parse_file(&text).map_err(|reason| ConfigError::File {
        path: path.to_owned(),
        reason,
    })
}

/// toml's messages quote the offending line, which may hold a secret: keep only the position
/// and the kind of problem.
pub fn parse_file<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|err| match err.span() {
        Some(span) => format!("invalid TOML near byte {}: {}", span.start, err.message()),
        None => format!("invalid TOML: {}", err.message()),
    })
}

/// The longest duration any setting takes: deadlines are instants (now + the setting), and an
/// instant past what the clock can hold would panic at the first use; a century is far below.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A humantime duration (`30s`, `10m`, `24h`), at most [`MAX_DURATION`]: the parser of every
/// duration flag, environment variable and file key.
pub fn duration(raw: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(raw).map_err(|err| err.to_string())?;
    if parsed > MAX_DURATION {
        return Err("must be at most 100 years".into());
    }
    Ok(parsed)
}

/// Durations in the file are humantime strings, as after their flag.
pub mod humantime_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|raw| super::duration(&raw).map_err(serde::de::Error::custom))
            .transpose()
    }
}

// === checks a declaration can name ===

pub fn positive(value: &Duration) -> Result<(), String> {
    if value.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(())
}

pub fn at_least<T: PartialOrd + std::fmt::Display>(min: T) -> impl Fn(&T) -> Result<(), String> {
    move |value| {
        if *value < min {
            return Err(format!("must be at least {min}"));
        }
        Ok(())
    }
}

/// A share of something: above 0, at most 1.
pub fn share(value: &f64) -> Result<(), String> {
    if !(*value > 0.0 && *value <= 1.0) {
        return Err("must be above 0 and at most 1".into());
    }
    Ok(())
}

/// A Redis key prefix: letters, digits and `-_:.`, not empty.
pub fn redis_prefix(value: &str) -> Result<(), String> {
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
    {
        return Err("must be letters, digits and - _ : . only, not empty".into());
    }
    Ok(())
}

pub fn not_blank(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(())
}
