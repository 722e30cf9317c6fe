//! One module per scenario; each measures voicehub beside a ceiling taken in
//! the same run, prints a table and writes its JSON and chart.

pub(crate) mod create;
pub(crate) mod detect;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod read;
pub(crate) mod scale;
pub(crate) mod startup;
pub(crate) mod sync;
