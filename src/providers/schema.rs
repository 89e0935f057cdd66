//! The two GraphQL types whose members come from the registered providers rather than from a
//! list in the code: the `Provider` enum and the `ProviderDetails` union.
//!
//! Owns: those two types, and [`DetailsObject`], what a provider module's details type is to
//! the schema. It sits between `domain` and `providers` so that a provider module can define
//! its details type without depending on the schema module (which depends on the providers).
//!
//! async-graphql builds a schema's type registry from static functions, with no way to pass
//! data in; [`with_providers`] makes the providers being registered visible to those
//! functions for the duration of one schema build, on the building thread only, so that
//! several schemas with different providers can be built in one process.

use std::borrow::Cow;
use std::cell::RefCell;

use async_graphql::parser::types::Field;
use async_graphql::registry::{Deprecation, MetaEnumValue, MetaType, MetaTypeId, Registry};
use async_graphql::resolver_utils::{resolve_container, ContainerType, Fields};
use async_graphql::{
    Context, ContextSelectionSet, InputType, InputValueError, InputValueResult, Name, ObjectType, OutputType,
    Positioned, ServerResult, UnionType, Value,
};

/// What the schema needs to know about one provider.
#[derive(Clone, Copy, Debug)]
pub struct ProviderSchema {
    /// The `Provider` enum value (`DHMAD`).
    pub name: &'static str,
    /// Its description in the schema.
    pub description: &'static str,
    /// Registers the provider's details object type; returns its (qualified) type name.
    pub register_details: fn(&mut Registry) -> String,
}

thread_local! {
    static BUILDING: RefCell<Vec<ProviderSchema>> = const { RefCell::new(Vec::new()) };
}

/// Runs `build` (which builds a schema) with `providers` as the members of `Provider` and
/// `ProviderDetails`.
pub fn with_providers<T>(providers: Vec<ProviderSchema>, build: impl FnOnce() -> T) -> T {
    let previous = BUILDING.with(|cell| cell.replace(providers));
    let built = build();
    BUILDING.with(|cell| cell.replace(previous));
    built
}

fn building() -> Vec<ProviderSchema> {
    BUILDING.with(|cell| cell.borrow().clone())
}

/// A provider, as a client names it: a value of the `Provider` enum. GraphQL validation has
/// already checked the name against the enum by the time a resolver sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProviderName(pub Name);

impl ProviderName {
    pub fn new(name: &str) -> Self {
        Self(Name::new(name))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_input_type::<Self, _>(MetaTypeId::Enum, |_| MetaType::Enum {
            name: "Provider".to_owned(),
            description: Some("A payment provider the gateway can ask.".to_owned()),
            enum_values: building()
                .into_iter()
                .map(|provider| {
                    (
                        provider.name.to_owned(),
                        MetaEnumValue {
                            name: provider.name.to_owned(),
                            description: Some(provider.description.to_owned()),
                            deprecation: Deprecation::NoDeprecated,
                            visible: None,
                            inaccessible: false,
                            tags: Vec::new(),
                            directive_invocations: Vec::new(),
                        },
                    )
                })
                .collect(),
            visible: None,
            inaccessible: false,
            tags: Vec::new(),
            rust_typename: Some(std::any::type_name::<Self>()),
            directive_invocations: Vec::new(),
            requires_scopes: Vec::new(),
        })
    }
}

impl InputType for ProviderName {
    type RawValueType = Self;

    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("Provider")
    }

    fn create_type_info(registry: &mut Registry) -> String {
        Self::create_type_info(registry)
    }

    /// A literal comes as an enum value, a variable (and a federation representation) as a
    /// string.
    fn parse(value: Option<Value>) -> InputValueResult<Self> {
        match value {
            Some(Value::Enum(name)) => Ok(Self(name)),
            Some(Value::String(name)) => Ok(Self::new(&name)),
            other => Err(InputValueError::expected_type(other.unwrap_or_default())),
        }
    }

    fn to_value(&self) -> Value {
        Value::Enum(self.0.clone())
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }
}

impl OutputType for ProviderName {
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("Provider")
    }

    fn create_type_info(registry: &mut Registry) -> String {
        Self::create_type_info(registry)
    }

    async fn resolve(&self, _: &ContextSelectionSet<'_>, _: &Positioned<Field>) -> ServerResult<Value> {
        Ok(Value::Enum(self.0.clone()))
    }
}

/// A provider's details object, as the `ProviderDetails` union holds it. Implemented for
/// every `#[Object]` type.
pub trait DetailsObject: Send + Sync {
    fn type_name(&self) -> Cow<'static, str>;

    fn collect_fields<'a>(
        &'a self,
        ctx: &ContextSelectionSet<'a>,
        fields: &mut Fields<'a>,
    ) -> ServerResult<()>;
}

impl<T: ObjectType> DetailsObject for T {
    fn type_name(&self) -> Cow<'static, str> {
        self.introspection_type_name()
    }

    fn collect_fields<'a>(
        &'a self,
        ctx: &ContextSelectionSet<'a>,
        fields: &mut Fields<'a>,
    ) -> ServerResult<()> {
        self.collect_all_fields(ctx, fields)
    }
}

/// `union ProviderDetails`: one member per registered provider, each defined in its module.
pub struct ProviderDetails(pub Box<dyn DetailsObject>);

impl std::fmt::Debug for ProviderDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ProviderDetails").field(&self.0.type_name()).finish()
    }
}

impl ContainerType for ProviderDetails {
    async fn resolve_field(&self, _ctx: &Context<'_>) -> ServerResult<Option<Value>> {
        Ok(None)
    }

    fn collect_all_fields<'a>(
        &'a self,
        ctx: &ContextSelectionSet<'a>,
        fields: &mut Fields<'a>,
    ) -> ServerResult<()> {
        self.0.collect_fields(ctx, fields)
    }
}

impl OutputType for ProviderDetails {
    fn type_name() -> Cow<'static, str> {
        Cow::Borrowed("ProviderDetails")
    }

    fn introspection_type_name(&self) -> Cow<'static, str> {
        self.0.type_name()
    }

    fn create_type_info(registry: &mut Registry) -> String {
        registry.create_output_type::<Self, _>(MetaTypeId::Union, |registry| MetaType::Union {
            name: "ProviderDetails".to_owned(),
            description: Some("Provider-specific fields of a session.".to_owned()),
            possible_types: building()
                .into_iter()
                .map(|provider| (provider.register_details)(registry).trim_end_matches('!').to_owned())
                .collect(),
            visible: None,
            inaccessible: false,
            tags: Vec::new(),
            rust_typename: Some(std::any::type_name::<Self>()),
            directive_invocations: Vec::new(),
        })
    }

    async fn resolve(&self, ctx: &ContextSelectionSet<'_>, _: &Positioned<Field>) -> ServerResult<Value> {
        resolve_container(ctx, self).await
    }
}

impl UnionType for ProviderDetails {}
