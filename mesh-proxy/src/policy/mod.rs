//! Traffic policy in the proxy: the live policies watched from the control
//! plane ([`client`]). What a policy means — its compiled form and the pure
//! functions that route and authorize — lives in `mesh-policy`, which
//! `meshctl policy explain` runs too.

pub(crate) mod client;
