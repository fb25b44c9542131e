//! The parts of xtask other crates use: the image builder (the images suite
//! builds images from the debug binaries with it).

pub mod images;
