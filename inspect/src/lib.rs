//! Content inspection for Bulwark: a message parsed once into views, rules matched on
//! Hyperscan (with PCRE2 where Hyperscan cannot), SpamAssassin rule import, a statistical
//! classifier, and the verdict with the headers stamped on delivered mail.

pub mod attach;
pub mod av;
pub mod classifier;
pub mod compiled;
pub mod corpus;
pub mod expr;
pub mod html;
pub mod inspector;
pub mod malware;
pub mod mime;
pub mod native;
pub mod phishing;
pub mod rules;
pub mod sa;
