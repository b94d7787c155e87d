"""The files medft writes for other stages and for outside tools, one module per file: its name, its
layout, its format version, its one writer and its one reader. Every other module goes through them."""
