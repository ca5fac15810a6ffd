//! Enum-like options (`--schedule`, `--backend`, `--tie-grad`, `--dataset`,
//! ...): each is a Rust enum deriving clap's `ValueEnum`, which names its
//! values once. [`choice_text!`](crate::choice_text) derives the rest from
//! those names (`Display`, `FromStr`, and serde as a plain string), so the
//! command line, `config.toml`, `meta.json` and the JSON reports spell a
//! value the same way, and an unknown value, wherever it is read, is an
//! error that lists the valid ones.

use clap::ValueEnum;
use std::fmt;

/// Writes the command-line name of `value`.
pub fn write_name<T: ValueEnum>(value: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let name = value
        .to_possible_value()
        .expect("choice enums skip no variant");
    f.write_str(name.get_name())
}

/// Parses `text` (a name or an alias); `what` names the option in the error.
pub fn parse<T: ValueEnum>(text: &str, what: &str) -> anyhow::Result<T> {
    T::from_str(text, false)
        .map_err(|_| anyhow::anyhow!("unknown {what} '{text}': use {}", valid_names::<T>()))
}

/// "a, b or c": the names of every value of `T` (aliases left out).
pub fn valid_names<T: ValueEnum>() -> String {
    let names: Vec<String> = T::value_variants()
        .iter()
        .filter_map(|v| v.to_possible_value())
        .map(|p| p.get_name().to_string())
        .collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// `choice_text!(Type, "what")` implements `Display`, `FromStr` and serde
/// for a `ValueEnum` type, all in its command-line spelling; `what` names
/// the option in the error for an unknown value ("unknown schedule 'x':
/// use constant or cosine").
#[macro_export]
macro_rules! choice_text {
    ($type:ty, $what:literal) => {
        impl ::std::fmt::Display for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                $crate::choice::write_name(self, f)
            }
        }

        impl ::std::str::FromStr for $type {
            type Err = ::anyhow::Error;
            fn from_str(text: &str) -> ::anyhow::Result<Self> {
                $crate::choice::parse(text, $what)
            }
        }

        impl ::serde::Serialize for $type {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $type {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                $crate::choice::parse(&text, $what)
                    .map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
    enum Fruit {
        Apple,
        #[value(name = "blood-orange", alias = "orange")]
        BloodOrange,
        Pear,
    }
    crate::choice_text!(Fruit, "fruit");

    #[test]
    fn one_spelling_everywhere_and_unknown_values_list_the_valid_ones() {
        assert_eq!(Fruit::BloodOrange.to_string(), "blood-orange");
        assert_eq!("orange".parse::<Fruit>().unwrap(), Fruit::BloodOrange);
        assert_eq!(
            serde_json::to_string(&Fruit::Apple).unwrap(),
            "\"apple\"".to_string()
        );
        let back: Fruit = serde_json::from_str("\"pear\"").unwrap();
        assert_eq!(back, Fruit::Pear);
        let e = "Apple".parse::<Fruit>().unwrap_err().to_string();
        assert_eq!(e, "unknown fruit 'Apple': use apple, blood-orange or pear");
        let e = serde_json::from_str::<Fruit>("\"kiwi\"").unwrap_err();
        assert!(e.to_string().contains("unknown fruit 'kiwi'"), "{e}");
    }
}
