//! Configuration errors, located at file:line:column or at the override that
//! set the value, each with a hint.

use super::*;

// ---------------------------------------------------------------------------
// Errors

/// Where an error points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A place in the file.
    File {
        path: String,
        line: usize,
        column: usize,
        line_text: String,
        width: usize,
    },
    /// A value given with `--set` or the environment.
    Override(String),
    /// A default value, not written anywhere; the table it belongs to.
    Default(String),
}

/// One configuration error with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub message: String,
    pub location: Option<Location>,
    pub hint: Option<String>,
}

/// All the errors found in a configuration, reported at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        match &self.location {
            Some(Location::File {
                path,
                line,
                column,
                line_text,
                width,
            }) => {
                let gutter = line.to_string().len();
                writeln!(f, "{:gutter$}--> {path}:{line}:{column}", "")?;
                writeln!(f, "{:gutter$} |", "")?;
                writeln!(f, "{line} | {line_text}")?;
                writeln!(
                    f,
                    "{:gutter$} | {}{}",
                    "",
                    " ".repeat(column.saturating_sub(1)),
                    "^".repeat((*width).max(1))
                )?;
            }
            Some(Location::Override(text)) => writeln!(f, " --> {text}")?,
            Some(Location::Default(text)) => writeln!(f, " --> {text}")?,
            None => {}
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "hint: {hint}")?;
        }
        Ok(())
    }
}

/// A problem found after parsing (validation, topology), located by key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted key path, e.g. `workers.remote.cpus`.
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}
