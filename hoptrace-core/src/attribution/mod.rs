//! Attribution: which segment and category each stretch of a journey's
//! time belongs to ([`taxonomy`]), and the histograms they add up to
//! ([`ledger`]).

pub mod ledger;
pub mod taxonomy;
