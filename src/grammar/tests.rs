//! Unit tests of the grammar parser, matcher and JSON Schema converter.

use super::*;
