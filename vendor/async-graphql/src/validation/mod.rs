#[cfg(test)]
#[macro_use]
mod test_harness;

mod rules;
mod suggestion;
mod utils;
mod visitor;
mod visitors;

pub use visitor::VisitorContext;
use visitor::{VisitorNil, visit};

use crate::{
    CacheControl, ServerError, Variables, parser::types::ExecutableDocument, registry::Registry,
};

/// Validation results.
#[derive(Debug, Copy, Clone)]
pub struct ValidationResult {
    /// Cache control
    pub cache_control: CacheControl,

    /// Query complexity
    pub complexity: usize,

    /// Query depth
    pub depth: usize,
}

/// Validation mode
#[derive(Copy, Clone, Debug)]
pub enum ValidationMode {
    /// Execute all validation rules.
    Strict,

    /// The executor itself also has error handling, so it can improve
    /// performance, but it can lose some error messages.
    Fast,

    /// Run no rule and no visitor over the document: it passed `Strict`
    /// validation against the same registry, with the same limits, before.
    /// Complexity and depth are not computed (they are reported as 0, and no
    /// limit is checked) and the cache control is the default: the caller
    /// vouches for all three. The request's variable values are still checked,
    /// since they change with every request: against the selected operation's
    /// variable definitions (not the document), and when one could be wrong,
    /// the `Strict` rules run, so the answer is the one `Strict` gives.
    /// A document a service has validated once need not pay for the walk on
    /// every request.
    Prevalidated,
}

pub(crate) fn check_rules(
    registry: &Registry,
    doc: &ExecutableDocument,
    variables: Option<&Variables>,
    operation_name: Option<&str>,
    mode: ValidationMode,
    limit_complexity: Option<usize>,
    limit_depth: Option<usize>,
) -> Result<ValidationResult, Vec<ServerError>> {
    let mut cache_control = CacheControl::default();
    let mut complexity = 0;
    let mut depth = 0;

    let mut ctx = VisitorContext::new(registry, doc, variables, operation_name);
    let mut errors = match mode {
        ValidationMode::Prevalidated => {
            // Variables are per request. When one could be
            // wrong, the `Strict` rules say what and where (an argument's position,
            // its path): the answer `Strict` gave when the document was first
            // validated.
            let check = check_variable_values(registry, doc, variables, operation_name, true);
            if check.suspect || !check.missing.is_empty() {
                return check_rules(
                    registry,
                    doc,
                    variables,
                    operation_name,
                    ValidationMode::Strict,
                    limit_complexity,
                    limit_depth,
                );
            }
            return Ok(ValidationResult {
                cache_control,
                complexity,
                depth,
            });
        }
        ValidationMode::Strict => {
            let mut visitor = VisitorNil
                .with(rules::ArgumentsOfCorrectType::default())
                .with(rules::DefaultValuesOfCorrectType)
                .with(rules::FieldsOnCorrectType)
                .with(rules::FragmentsOnCompositeTypes)
                .with(rules::KnownArgumentNames::default())
                .with(rules::NoFragmentCycles::default())
                .with(rules::KnownFragmentNames)
                .with(rules::KnownTypeNames)
                .with(rules::NoUndefinedVariables::default())
                .with(rules::NoUnusedFragments::default())
                .with(rules::NoUnusedVariables::default())
                .with(rules::UniqueArgumentNames::default())
                .with(rules::UniqueVariableNames::default())
                .with(rules::VariablesAreInputTypes)
                .with(rules::VariableInAllowedPosition::default())
                .with(rules::ScalarLeafs)
                .with(rules::PossibleFragmentSpreads::default())
                .with(rules::ProvidedNonNullArguments)
                .with(rules::KnownDirectives::default())
                .with(rules::DirectivesUnique)
                .with(rules::OverlappingFieldsCanBeMerged)
                .with(rules::UploadFile);
            visit(&mut visitor, &mut ctx, doc);

            let mut visitor = VisitorNil
                .with(visitors::CacheControlCalculate {
                    cache_control: &mut cache_control,
                })
                .with(visitors::ComplexityCalculate::new(&mut complexity))
                .with(visitors::DepthCalculate::new(&mut depth));
            visit(&mut visitor, &mut ctx, doc);
            ctx.errors
        }
        ValidationMode::Fast => {
            let mut visitor = VisitorNil
                .with(rules::NoFragmentCycles::default())
                .with(rules::UploadFile)
                .with(visitors::CacheControlCalculate {
                    cache_control: &mut cache_control,
                })
                .with(visitors::ComplexityCalculate::new(&mut complexity))
                .with(visitors::DepthCalculate::new(&mut depth));
            visit(&mut visitor, &mut ctx, doc);
            ctx.errors
        }
    };
    // A required variable without a value is a request
    // error (GraphQL spec, CoerceVariableValues), not a field error at execution.
    errors.extend(check_variable_values(registry, doc, variables, operation_name, false).missing);

    // check limit
    if let Some(limit_complexity) = limit_complexity
        && complexity > limit_complexity
    {
        return Err(vec![ServerError::new("Query is too complex.", None)]);
    }

    if let Some(limit_depth) = limit_depth
        && depth > limit_depth
    {
        return Err(vec![ServerError::new("Query is nested too deep.", None)]);
    }

    if !errors.is_empty() {
        return Err(errors.into_iter().map(Into::into).collect());
    }

    Ok(ValidationResult {
        cache_control,
        complexity,
        depth,
    })
}

/// What the request's variable values are, next to the selected operation's
/// definitions.
struct VariableCheck {
    /// Non-null variables without a default that have no value.
    missing: Vec<visitor::RuleError>,
    /// A value may be wrong where it is used: only the `Strict` rules can tell,
    /// and say where.
    suspect: bool,
}

/// Checks the values against the declared types only: a document that passed
/// `Strict` validation uses each variable only where its declared type is
/// allowed, so a value of that type fits every use. An explicit `null` is
/// suspect, since a nullable variable with a default may be used where `null`
/// is not allowed. Costs one lookup per declared variable, no walk of the
/// document. `check_values` only for a validated document: the declared types
/// of any other may be unknown to the registry.
fn check_variable_values(
    registry: &Registry,
    doc: &ExecutableDocument,
    variables: Option<&Variables>,
    operation_name: Option<&str>,
    check_values: bool,
) -> VariableCheck {
    use crate::parser::types::DocumentOperations;

    // The operation that will run, chosen as `prepare_request` chooses it; none
    // (an unknown name) is reported there.
    let operation = match (&doc.operations, operation_name) {
        (DocumentOperations::Single(operation), None) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations.get(name),
        (DocumentOperations::Multiple(operations), None) if operations.len() == 1 => {
            operations.values().next()
        }
        _ => None,
    };
    let mut check = VariableCheck {
        missing: Vec::new(),
        suspect: false,
    };
    let Some(operation) = operation else {
        return check;
    };
    for definition in &operation.node.variable_definitions {
        let definition = &definition.node;
        let name = &definition.name.node;
        match variables.and_then(|variables| variables.get(name)) {
            None => {
                if definition.default_value().is_none() {
                    check.missing.push(visitor::RuleError::new(
                        vec![definition.name.pos],
                        format!(
                            "Variable \"${}\" of required type \"{}\" was not provided.",
                            name, definition.var_type.node
                        ),
                    ));
                }
            }
            Some(_) if !check_values => {}
            Some(crate::Value::Null) => check.suspect = true,
            Some(value) => check.suspect |= !fits(registry, &definition.var_type.node, value),
        }
    }
    check
}

/// Whether `value` is of type `ty`: `is_valid_input_value`'s verdict, on the parsed type (no
/// type name written and parsed again per request). Only the verdict counts here: a value
/// that does not fit is reported by the `Strict` rules, in their words.
fn fits(registry: &Registry, ty: &crate::parser::types::Type, value: &crate::Value) -> bool {
    use crate::parser::types::BaseType;

    match (value, &ty.base) {
        (crate::Value::Null, _) => ty.nullable,
        (_, BaseType::Named(name)) => {
            let path = crate::context::QueryPathNode {
                parent: None,
                segment: crate::QueryPathSegment::Name(name),
            };
            utils::is_valid_input_value(registry, name, value, path).is_none()
        }
        (crate::Value::List(items), BaseType::List(item)) => {
            items.iter().all(|value| fits(registry, item, value))
        }
        // A single value where a list is expected is a list of one (input coercion).
        (_, BaseType::List(item)) => fits(registry, item, value),
    }
}
