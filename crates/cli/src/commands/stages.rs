//! `kiln stages`: the stage kinds, generated from the registry.

use kiln_core::Registry;

pub fn run(registry: &Registry) {
    for kind in registry.kinds() {
        println!("{} (v{}): {}", kind.kind(), kind.version(), kind.doc());
        for p in kind.params() {
            let req = if p.required { "required" } else { "optional" };
            let rule = match p.constraint {
                kiln_core::Constraint::None => String::new(),
                c => format!("; accepts {c}"),
            };
            println!(
                "    {:<12} {:<7} {req}: {}{rule}",
                p.name,
                p.ty.to_string(),
                p.doc
            );
        }
        if kind.accepts_extra_params() {
            println!("    (other keys are accepted and passed through)");
        }
    }
}
