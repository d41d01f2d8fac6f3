//! Errors that reach the user. Every error leaving a command is "bad input" (exit 2)
//! unless the command chose another code.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// The input (file, flag, field) is wrong; the message names where.
    #[error("{0}")]
    Input(String),
    /// An I/O problem with a named path. The OS error is part of the message (not a separate
    /// `source`), so the one-line `{:#}` rendering does not print it twice.
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
}

impl Error {
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            err: source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
