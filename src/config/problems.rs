//! What is wrong with a configuration: each [`Problem`] names its key and says how to fix it;
//! validation pushes them into one [`Problems`] collector and goes on, so that [`ConfigError`]
//! lists every problem at once.

use std::{collections::HashSet, fmt, ops::Deref};

/// One thing wrong with the configuration: which key, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "configuration has {} problem{}:",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// The problems found so far, in the order found. It reads as a slice of [`Problem`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(key, message));
    }

    /// Adds problems found elsewhere (the credential, a tenants file).
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.0.extend(problems);
    }

    /// Drops the problems found after the first `first` whose key is among those first ones: a
    /// key already reported as malformed is not reported again as missing.
    pub(super) fn drop_repeated_keys_after(&mut self, first: usize) {
        let reported: HashSet<String> = self.0[..first].iter().map(|p| p.key.clone()).collect();
        let mut i = 0;
        self.0.retain(|p| {
            i += 1;
            i <= first || !reported.contains(&p.key)
        });
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.0
    }
}

impl Deref for Problems {
    type Target = [Problem];

    fn deref(&self) -> &[Problem] {
        &self.0
    }
}

impl IntoIterator for Problems {
    type Item = Problem;
    type IntoIter = std::vec::IntoIter<Problem>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl From<Problems> for ConfigError {
    fn from(problems: Problems) -> Self {
        Self {
            problems: problems.0,
        }
    }
}
