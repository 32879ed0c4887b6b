//! CPU references
