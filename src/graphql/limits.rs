//! Limits on a document's shape that async-graphql does not check itself: aliases and root
//! fields. (Depth and complexity are the schema's own limits.) Checked on the parsed document,
//! before anything runs, in time linear in the document's size.

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The most aliases in a document and root fields in an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeLimits {
    pub max_aliases: usize,
    pub max_root_fields: usize,
}

/// `Err` with the reason when `document` goes past `limits`.
pub fn check(document: &ExecutableDocument, limits: ShapeLimits) -> Result<(), String> {
    let mut aliases = 0;
    for (_, operation) in document.operations.iter() {
        aliases += count_aliases(&operation.node.selection_set.node);
        let root = root_fields(document, &operation.node.selection_set.node, 0);
        if root > limits.max_root_fields {
            return Err(format!(
                "an operation selects {root} root fields; at most {} are allowed (GATEWAY_MAX_ROOT_FIELDS)",
                limits.max_root_fields
            ));
        }
    }
    for fragment in document.fragments.values() {
        aliases += count_aliases(&fragment.node.selection_set.node);
    }
    if aliases > limits.max_aliases {
        return Err(format!(
            "the document has {aliases} aliases; at most {} are allowed (GATEWAY_MAX_ALIASES)",
            limits.max_aliases
        ));
    }
    Ok(())
}

fn count_aliases(set: &SelectionSet) -> usize {
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(field) => {
                usize::from(field.node.alias.is_some()) + count_aliases(&field.node.selection_set.node)
            }
            Selection::InlineFragment(fragment) => count_aliases(&fragment.node.selection_set.node),
            // Counted once, with the fragment's definition.
            Selection::FragmentSpread(_) => 0,
        })
        .sum()
}

/// Fields at the root, through fragments (a spread cycle is a validation error; `depth`
/// only stops one from looping here first).
fn root_fields(document: &ExecutableDocument, set: &SelectionSet, depth: usize) -> usize {
    if depth > 16 {
        return 0;
    }
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(fragment) => {
                root_fields(document, &fragment.node.selection_set.node, depth + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |fragment| root_fields(document, &fragment.node.selection_set.node, depth + 1)),
        })
        .sum()
}
