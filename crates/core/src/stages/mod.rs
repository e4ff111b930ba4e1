//! The engine's own stage kinds. One file per kind; one line each in [`register`].

mod echo;
mod shell;

pub use echo::Echo;
pub use shell::Shell;

use crate::stage::Registry;

/// Adds the engine's kinds to `registry`.
pub fn register(registry: &mut Registry) {
    registry.add(Shell);
    registry.add(Echo);
}
