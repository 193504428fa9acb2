//! Fieldless enums whose values are stable snake_case names: the same text in JSON (serde),
//! in messages (Display), in databases and on command lines (FromStr).

/// Declares such an enum: `snake_case_enum! { pub enum T("what") { Variant = "variant", … } }`.
/// Each name must be the serde `snake_case` spelling of its variant (tests check it); the
/// macro keeps `as_str`, `Display`, `FromStr` and `ALL` in one place.
macro_rules! snake_case_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident($what:literal) {
            $( $(#[$vm:meta])* $v:ident = $s:literal, )+
        }
    ) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vm])* $v, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];

            /// The snake_case name, as serialised.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$v => $s, )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| format!(concat!("unknown ", $what, " `{}`"), s))
            }
        }
    };
}

pub(crate) use snake_case_enum;
