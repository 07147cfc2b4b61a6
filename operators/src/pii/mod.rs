//! PII: drops, masks or tokenizes configured value fields, headers and the key before a record
//! goes further, so personal data does not spread beyond the input topic.
//!
//! - [`config`]: [`PiiConfig`] and its rules.
//! - [`operator`]: [`Pii`], the rewriting itself.

pub mod config;
pub mod operator;

pub use config::{FieldRule, HeaderRule, PiiAction, PiiConfig};
pub use operator::{Pii, PII_HEADER};

#[cfg(test)]
mod tests;
