//! Image references: `[domain/]path[:tag][@digest]`, normalized as docker does.
