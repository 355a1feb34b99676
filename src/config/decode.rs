//! Decodes a [`Node`] tree into typed config with serde, keeping positions.
//!
//! This is a serde `Deserializer` over the position-carrying tree, with the
//! behaviour a config loader needs and a plain YAML deserializer lacks:
//!
//! - **Every error has a position.** Errors raised by a visitor (a missing
//!   field, a bad unit) get the position of the node being decoded.
//! - **All unknown fields are reported, not just the first.** Structs get the
//!   list of their fields from serde; unknown keys are recorded as
//!   diagnostics with a "did you mean" hint and skipped, and decoding goes on.
//! - **Kubernetes-only Argo fields** (listed in [`super::k8s_only`]) are
//!   accepted with a warning instead of being errors.
//! - **Lenient scalars**, as Kubernetes users write them: `port: 12000` and
//!   `port: "12000"` both decode into a string or an integer field.
//! - [`Spanned<T>`] fields receive the position of their value.
//!
//! A type error still ends the decoding of that document (serde cannot resume
//! a derived visitor); unknown-field diagnostics found before it are kept.

use super::diagnostic::Diagnostics;
use super::suggest::did_you_mean;
use super::yaml::{Node, Pos, Value};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use std::fmt;

/// A value together with the position of the YAML node it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Spanned<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Spanned { value, pos }
    }
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

pub(crate) const SPANNED_MAGIC: &str = "$spillway::Spanned";

impl<'de, T: de::Deserialize<'de>> de::Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: de::Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value with a position")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Spanned<T>, A::Error> {
                let line: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing line"))?;
                let col: u32 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing column"))?;
                let value: T = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("missing value"))?;
                Ok(Spanned {
                    value,
                    pos: Pos { line, col },
                })
            }
        }
        deserializer
            .deserialize_newtype_struct(SPANNED_MAGIC, SpannedVisitor(std::marker::PhantomData))
    }
}

/// A decoding error: a message and, once known, where it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError {
    pub pos: Option<Pos>,
    pub message: String,
}

impl DecodeError {
    fn at(pos: Pos, message: impl Into<String>) -> Self {
        DecodeError {
            pos: Some(pos),
            message: message.into(),
        }
    }

    /// Fills in the position if the error does not have one yet.
    fn or_at(mut self, pos: Pos) -> Self {
        self.pos.get_or_insert(pos);
        self
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError {
            pos: None,
            message: msg.to_string(),
        }
    }

    fn missing_field(field: &'static str) -> Self {
        Self::custom(format!("missing required field `{field}`"))
    }
}

/// Decodes `node` into `T`; unknown fields and warnings go to `diagnostics`.
pub fn decode<'a, T: de::Deserialize<'a>>(
    node: &'a Node,
    diagnostics: &'a Diagnostics,
) -> Result<T, DecodeError> {
    T::deserialize(NodeDeserializer { node, diagnostics })
        .map_err(|e: DecodeError| e.or_at(node.pos))
}

/// The serde `Deserializer` over one [`Node`].
#[derive(Clone, Copy)]
pub struct NodeDeserializer<'a> {
    node: &'a Node,
    diagnostics: &'a Diagnostics,
}

impl<'a> NodeDeserializer<'a> {
    /// A deserializer over `node` that records diagnostics in `diagnostics`.
    pub fn new(node: &'a Node, diagnostics: &'a Diagnostics) -> Self {
        NodeDeserializer { node, diagnostics }
    }

    fn child(&self, node: &'a Node) -> Self {
        NodeDeserializer {
            node,
            diagnostics: self.diagnostics,
        }
    }

    fn expected(&self, what: &str) -> DecodeError {
        DecodeError::at(
            self.node.pos,
            format!("expected {what}, found {}", self.node.describe()),
        )
    }

    fn integer(&self) -> Result<i128, DecodeError> {
        match &self.node.value {
            Value::Int(i) => Ok(i128::from(*i)),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e18 => Ok(*x as i128),
            Value::Str(s) => s
                .trim()
                .parse::<i128>()
                .map_err(|_| self.expected("an integer")),
            _ => Err(self.expected("an integer")),
        }
    }

    fn float(&self) -> Result<f64, DecodeError> {
        match &self.node.value {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(x) => Ok(*x),
            Value::Str(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| self.expected("a number")),
            _ => Err(self.expected("a number")),
        }
    }
}

macro_rules! decode_integer {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
            let n = self.integer()?;
            let n = <$ty>::try_from(n).map_err(|_| {
                DecodeError::at(
                    self.node.pos,
                    format!("{n} is out of range (expected {} to {})", <$ty>::MIN, <$ty>::MAX),
                )
            })?;
            visitor.$visit(n.into()).map_err(|e: DecodeError| e.or_at(self.node.pos))
        }
    )*};
}

impl<'a> Deserializer<'a> for NodeDeserializer<'a> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let pos = self.node.pos;
        match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Seq(items) => visitor.visit_seq(NodeSeq::new(self, items)),
            Value::Map(entries) => visitor.visit_map(NodeMap::new(self, entries.iter().collect())),
        }
        .map_err(|e: DecodeError| e.or_at(pos))
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let b = match &self.node.value {
            Value::Bool(b) => *b,
            Value::Str(s) if s.eq_ignore_ascii_case("true") => true,
            Value::Str(s) if s.eq_ignore_ascii_case("false") => false,
            _ => return Err(self.expected("true or false")),
        };
        visitor
            .visit_bool(b)
            .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    decode_integer! {
        deserialize_i8 => i8, visit_i64;
        deserialize_i16 => i16, visit_i64;
        deserialize_i32 => i32, visit_i64;
        deserialize_i64 => i64, visit_i64;
        deserialize_u8 => u8, visit_u64;
        deserialize_u16 => u16, visit_u64;
        deserialize_u32 => u32, visit_u64;
        deserialize_u64 => u64, visit_u64;
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let x = self.float()?;
        visitor
            .visit_f64(x)
            .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let pos = self.node.pos;
        match &self.node.value {
            Value::Str(s) => visitor.visit_borrowed_str(s),
            Value::Int(i) => visitor.visit_string(i.to_string()),
            Value::Float(x) => visitor.visit_string(x.to_string()),
            Value::Bool(b) => visitor.visit_string(b.to_string()),
            _ => return Err(self.expected("a string")),
        }
        .map_err(|e: DecodeError| e.or_at(pos))
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
        .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_unit<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Null => visitor
                .visit_unit()
                .map_err(|e: DecodeError| e.or_at(self.node.pos)),
            _ => Err(self.expected("nothing (null)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if name == SPANNED_MAGIC {
            return visitor.visit_seq(SpannedSeq { de: self, step: 0 });
        }
        visitor
            .visit_newtype_struct(self)
            .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Seq(items) => visitor.visit_seq(NodeSeq::new(self, items)),
            // `dependencies:` with nothing after it is an empty list, as in Kubernetes.
            Value::Null => visitor.visit_seq(NodeSeq::new(self, &[])),
            _ => return Err(self.expected("a list")),
        }
        .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_tuple<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Map(entries) => visitor.visit_map(NodeMap::new(self, entries.iter().collect())),
            Value::Null => visitor.visit_map(NodeMap::new(self, Vec::new())),
            _ => return Err(self.expected("a mapping")),
        }
        .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let entries: &'a [(Node, Node)] = match &self.node.value {
            Value::Map(entries) => entries,
            Value::Null => &[],
            _ => return Err(self.expected("a mapping")),
        };
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            let (key, _) = entry;
            let Some(key_name) = key.as_str() else {
                self.diagnostics.error(
                    key.pos,
                    format!("expected a field name, found {}", key.describe()),
                );
                continue;
            };
            if fields.contains(&key_name) {
                known.push(entry);
            } else if let Some(why) = super::k8s_only::not_supported(name, key_name) {
                self.diagnostics
                    .error(key.pos, format!("`{key_name}` is not supported: {why}"));
            } else if super::k8s_only::is_k8s_only(name, key_name) {
                self.diagnostics.warning(
                    key.pos,
                    format!(
                        "field `{key_name}` only has a meaning on Kubernetes; accepted and ignored"
                    ),
                );
            } else {
                self.diagnostics
                    .error(key.pos, unknown_field_message(key_name, name, fields));
            }
        }
        visitor
            .visit_map(NodeMap::new(self, known))
            .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match &self.node.value {
            Value::Str(_) => visitor.visit_enum(NodeEnum {
                variant: self,
                value: None,
            }),
            Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(NodeEnum {
                variant: self.child(&entries[0].0),
                value: Some(self.child(&entries[0].1)),
            }),
            _ => return Err(self.expected("a name or a mapping with one key")),
        }
        .map_err(|e: DecodeError| e.or_at(self.node.pos))
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

/// "unknown field `x` in <struct>; did you mean `y`?" or the list of fields.
fn unknown_field_message(key: &str, struct_name: &str, fields: &[&str]) -> String {
    let place = struct_name.trim_end_matches("Config");
    match did_you_mean(key, fields.iter().copied()) {
        Some(hint) => format!("unknown field `{key}` in {place}; did you mean `{hint}`?"),
        None => {
            let mut listed: Vec<&str> = fields.to_vec();
            listed.sort_unstable();
            format!(
                "unknown field `{key}` in {place}; expected one of: {}",
                listed.join(", ")
            )
        }
    }
}

struct NodeSeq<'a> {
    de: NodeDeserializer<'a>,
    items: std::slice::Iter<'a, Node>,
}

impl<'a> NodeSeq<'a> {
    fn new(de: NodeDeserializer<'a>, items: &'a [Node]) -> Self {
        NodeSeq {
            de,
            items: items.iter(),
        }
    }
}

impl<'a> SeqAccess<'a> for NodeSeq<'a> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(self.de.child(node))
                .map(Some)
                .map_err(|e: DecodeError| e.or_at(node.pos)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct NodeMap<'a> {
    de: NodeDeserializer<'a>,
    entries: std::vec::IntoIter<&'a (Node, Node)>,
    value: Option<&'a Node>,
}

impl<'a> NodeMap<'a> {
    fn new(de: NodeDeserializer<'a>, entries: Vec<&'a (Node, Node)>) -> Self {
        NodeMap {
            de,
            entries: entries.into_iter(),
            value: None,
        }
    }
}

impl<'a> MapAccess<'a> for NodeMap<'a> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(self.de.child(key))
                    .map(Some)
                    .map_err(|e: DecodeError| e.or_at(key.pos))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| DecodeError::at(self.de.node.pos, "mapping value without a key"))?;
        seed.deserialize(self.de.child(value))
            .map_err(|e: DecodeError| e.or_at(value.pos))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct SpannedSeq<'a> {
    de: NodeDeserializer<'a>,
    step: u8,
}

impl<'a> SeqAccess<'a> for SpannedSeq<'a> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        let pos = self.de.node.pos;
        self.step += 1;
        match self.step {
            1 => seed.deserialize(pos.line.into_deserializer()).map(Some),
            2 => seed.deserialize(pos.col.into_deserializer()).map(Some),
            3 => seed.deserialize(self.de).map(Some),
            _ => Ok(None),
        }
    }
}

struct NodeEnum<'a> {
    variant: NodeDeserializer<'a>,
    value: Option<NodeDeserializer<'a>>,
}

impl<'a> EnumAccess<'a> for NodeEnum<'a> {
    type Error = DecodeError;
    type Variant = NodeVariant<'a>;

    fn variant_seed<V: DeserializeSeed<'a>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeVariant<'a>), DecodeError> {
        let pos = self.variant.node.pos;
        let variant = seed
            .deserialize(self.variant)
            .map_err(|e: DecodeError| e.or_at(pos))?;
        Ok((
            variant,
            NodeVariant {
                pos,
                value: self.value,
            },
        ))
    }
}

struct NodeVariant<'a> {
    pos: Pos,
    value: Option<NodeDeserializer<'a>>,
}

impl<'a> NodeVariant<'a> {
    fn value(self) -> Result<NodeDeserializer<'a>, DecodeError> {
        self.value
            .ok_or_else(|| DecodeError::at(self.pos, "this variant needs a value"))
    }
}

impl<'a> VariantAccess<'a> for NodeVariant<'a> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        match self.value {
            None => Ok(()),
            Some(de) if matches!(de.node.value, Value::Null) => Ok(()),
            Some(de) => Err(de.expected("no value")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'a>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self.value()?)
    }

    fn tuple_variant<V: Visitor<'a>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'a>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.value()?.deserialize_struct("variant", fields, visitor)
    }
}
