//! `kiln dag FILE`: the stage graph as a tree, Mermaid or dot.

use std::path::Path;

use anyhow::Result;
use kiln_core::{Pipeline, spec};

use crate::args::DagFormat;

pub fn run(file: &Path, format: DagFormat) -> Result<()> {
    let pipeline = super::load(file)?;
    if let Some(cycle) = spec::find_cycle(&pipeline) {
        anyhow::bail!(
            "{}: dependency cycle: {}",
            file.display(),
            cycle.join(" → ")
        );
    }
    print!("{}", render(&pipeline, format));
    Ok(())
}

/// Renders the graph (edges go from a need to the stage that needs it).
pub fn render(p: &Pipeline, format: DagFormat) -> String {
    let order = spec::topological_order(p);
    let mut out = String::new();
    match format {
        DagFormat::Text => {
            out.push_str(&format!("{}\n", p.name));
            let roots: Vec<&String> = order
                .iter()
                .filter(|s| p.stage(s).is_some_and(|st| p.needs_of(st).is_empty()))
                .collect();
            for (i, root) in roots.iter().enumerate() {
                tree(p, root, "", i + 1 == roots.len(), &mut out);
            }
        }
        DagFormat::Mermaid => {
            out.push_str("flowchart TD\n");
            for name in &order {
                if let Some(s) = p.stage(name) {
                    out.push_str(&format!("    {}[\"{} ({})\"]\n", ident(name), name, s.uses));
                }
            }
            for name in &order {
                if let Some(s) = p.stage(name) {
                    for need in p.needs_of(s) {
                        out.push_str(&format!("    {} --> {}\n", ident(&need), ident(name)));
                    }
                }
            }
        }
        DagFormat::Dot => {
            out.push_str(&format!("digraph {:?} {{\n    rankdir=LR;\n", p.name));
            for name in &order {
                if let Some(s) = p.stage(name) {
                    out.push_str(&format!("    {name:?} [label=\"{name}\\n{}\"];\n", s.uses));
                }
            }
            for name in &order {
                if let Some(s) = p.stage(name) {
                    for need in p.needs_of(s) {
                        out.push_str(&format!("    {need:?} -> {name:?};\n"));
                    }
                }
            }
            out.push_str("}\n");
        }
    }
    out
}

fn ident(name: &str) -> String {
    name.replace('-', "_")
}

fn tree(p: &Pipeline, name: &str, prefix: &str, last: bool, out: &mut String) {
    let kind = p.stage(name).map_or("?", |s| s.uses.as_str());
    out.push_str(&format!(
        "{prefix}{} {name} ({kind})\n",
        if last { "└──" } else { "├──" }
    ));
    let children: Vec<&str> = p
        .stages
        .iter()
        .filter(|s| p.needs_of(s).iter().any(|n| n == name))
        .map(|s| s.name.as_str())
        .collect();
    let next = format!("{prefix}{}", if last { "    " } else { "│   " });
    for (i, child) in children.iter().enumerate() {
        tree(p, child, &next, i + 1 == children.len(), out);
    }
}
