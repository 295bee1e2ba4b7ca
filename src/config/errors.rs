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
                // A window of the line around the column: a 50 MB line is
                // quoted as 100 characters, never whole.
                let chars: Vec<char> = line_text.chars().collect();
                let start = column.saturating_sub(1).saturating_sub(40);
                let end = (column + 60).min(chars.len());
                let shown: String = chars[start.min(end)..end].iter().collect();
                let lead = if start > 0 { "…" } else { "" };
                let tail = if end < chars.len() { "…" } else { "" };
                writeln!(
                    f,
                    "{line} | {lead}{}{tail}",
                    crate::model::bounded(&shown, 200)
                )?;
                writeln!(
                    f,
                    "{:gutter$} | {}{}",
                    "",
                    " ".repeat(column.saturating_sub(1) - start + lead.chars().count()),
                    "^".repeat((*width).clamp(1, 60))
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
