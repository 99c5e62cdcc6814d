//! A component built against a future contract version the host does not implement.

wit_bindgen::generate!({
    inline: r#"
        package quarry:retrieval@2.0.0;
        interface strategy {
            describe: func() -> string;
        }
        world plugin {
            export strategy;
        }
    "#,
});

struct Future;

impl exports::quarry::retrieval::strategy::Guest for Future {
    fn describe() -> String {
        "from the future".to_string()
    }
}

export!(Future);
