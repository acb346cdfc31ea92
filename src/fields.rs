//! JSON values read once for a parser that picks columns out of them, without building a
//! `serde_json::Value` tree: a [`Field`] keeps a string borrowed from the text, an [`Item`] keeps
//! an object as its properties in text order, [`Skip`] only checks a value. Every value goes
//! through serde_json's `deserialize_any`, as when it reads a `Value` (never its lenient
//! `ignored_any`), so a text is accepted exactly when `serde_json::from_str::<Value>` accepts it:
//! numbers are range-checked, escapes and surrogates validated, the nesting limit the same.
//! Only a nested array or object is built as a `Value`. [`Sorted`] writes an object back as a
//! `Value` would: compact, keys sorted, the last of duplicate keys.
//!
//! One difference is left alone: serde_json reads an object whose first key is its private marker
//! `$serde_json::private::RawValue` as the JSON text of that key's value; read as a [`Top`] or an
//! [`Item`], such an object is an ordinary one.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

/// One value: null, a string (borrowed unless it had escapes), or any other value as serde_json
/// reads it into a `Value`.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Null,
    Str(Cow<'a, str>),
    Other(Value),
}

/// One property of an object: its name and its value.
pub type Prop<'a> = (Cow<'a, str>, Field<'a>);

/// An array item: an object as its properties in text order (duplicates included), or any other
/// value.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    Object(Vec<Prop<'a>>),
    Other(Field<'a>),
}

/// A value expected to be an array of objects: its items, or the value it is instead.
#[derive(Debug, Clone, PartialEq)]
pub enum Items<'a> {
    Array(Vec<Item<'a>>),
    Other(Field<'a>),
}

/// A value read and checked as serde_json reads a `Value`, then dropped.
pub struct Skip;

/// A property name, borrowed unless it had escapes.
struct Name<'a>(Cow<'a, str>);

/// What a parser keeps of an object's properties: `read` takes the value of property `name` from
/// `map`, as a [`Field`], as [`Items`], or as a [`Skip`] when it has no use for it.
pub trait Props<'de>: Default {
    fn read<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error>;
}

/// A JSON text's value: an object read into `P`, or another value (checked, then dropped).
pub enum Top<P> {
    Object(P),
    Other,
}

/// Reads `text` into a [`Top`]. Its error is the one `serde_json::from_str::<Value>` gives for the
/// same text, word for word.
pub fn read_top<'de, P: Props<'de>>(text: &'de str) -> Result<Top<P>, serde_json::Error> {
    serde_json::from_str(text).map_err(|e| serde_json::from_str::<Value>(text).err().unwrap_or(e))
}

struct FieldVisitor;

/// The `Visitor` methods of every value but an object and an array, as [`FieldVisitor`]'s,
/// wrapped in `$wrap`.
macro_rules! scalars_as_fields {
    ($wrap:expr) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            FieldVisitor.visit_unit().map($wrap)
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            FieldVisitor.visit_bool(v).map($wrap)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            FieldVisitor.visit_i64(v).map($wrap)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            FieldVisitor.visit_u64(v).map($wrap)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            FieldVisitor.visit_f64(v).map($wrap)
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            FieldVisitor.visit_borrowed_str(v).map($wrap)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            FieldVisitor.visit_str(v).map($wrap)
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
            FieldVisitor.visit_string(v).map($wrap)
        }
    };
}

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Field<'de>, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::Bool(v)))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Field<'de>, E> {
        Ok(Field::Other(Value::from(v)))
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Field<'de>, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
        Value::deserialize(MapAccessDeserializer::new(map)).map(Field::Other)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_as_fields!(Item::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item<'de>, A::Error> {
        FieldVisitor.visit_seq(seq).map(Item::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
        let mut props = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(Name(name)) = map.next_key()? {
            props.push((name, map.next_value()?));
        }
        Ok(Item::Object(props))
    }
}

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

struct ItemsVisitor;

impl<'de> Visitor<'de> for ItemsVisitor {
    type Value = Items<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_as_fields!(Items::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(8));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Items::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Items<'de>, A::Error> {
        FieldVisitor.visit_map(map).map(Items::Other)
    }
}

impl<'de> Deserialize<'de> for Items<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemsVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_as_fields!(|_| Skip);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Name>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct TopVisitor<P>(PhantomData<P>);

impl<'de, P: Props<'de>> Visitor<'de> for TopVisitor<P> {
    type Value = Top<P>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    scalars_as_fields!(|_| Top::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<P>, A::Error> {
        SkipVisitor.visit_seq(seq).map(|_| Top::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<P>, A::Error> {
        let mut props = P::default();
        while let Some(Name(name)) = map.next_key()? {
            props.read(&name, &mut map)?;
        }
        Ok(Top::Object(props))
    }
}

impl<'de, P: Props<'de>> Deserialize<'de> for Top<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TopVisitor(PhantomData))
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a property name")
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(v)))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v)))
    }
}

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

/// An object's properties sorted by name, of duplicate names the last only: those a
/// `serde_json::Map` (a `BTreeMap` without `preserve_order`) keeps, in its order.
pub fn sorted<'p, 'a>(props: &'p [Prop<'a>]) -> Vec<&'p Prop<'a>> {
    let mut all: Vec<&Prop> = props.iter().collect();
    // stable: duplicates stay in text order, so the last of a run is the last in the text
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept = Vec::with_capacity(all.len());
    for (i, p) in all.iter().enumerate() {
        if all.get(i + 1).is_none_or(|next| next.0 != p.0) {
            kept.push(*p);
        }
    }
    kept
}

/// An object as [`sorted`] properties, serialised as the `Value` it stands for.
pub struct Sorted<'p, 'a>(pub &'p [&'p Prop<'a>]);

impl Serialize for Sorted<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name.as_ref(), value)?;
        }
        map.end()
    }
}

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Null => s.serialize_unit(),
            Field::Str(v) => s.serialize_str(v),
            Field::Other(v) => v.serialize(s),
        }
    }
}
