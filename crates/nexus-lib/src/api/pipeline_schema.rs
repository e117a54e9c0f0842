//! The OpenAPI schema of [`Stage`], written by hand: utoipa would describe each variant as
//! `allOf` of the stage's object (which forbids other properties) and the `stage` tag, which no
//! value can satisfy.

use utoipa::ToSchema;

use super::*;

/// The schema of [`Stage`]: one object per variant, each the stage's own object (no other
/// properties) with the required `stage` tag added.
fn stage_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::PartialSchema;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let variants = [
        ("fetch", FetchStage::schema()),
        ("checksum", ChecksumStage::schema()),
        ("signature", SignatureStage::schema()),
        ("decompress", DecompressStage::schema()),
        ("extract", ExtractStage::schema()),
        ("convert", ConvertStage::schema()),
        ("install", InstallStage::schema()),
        ("kernel-build", KernelBuildStage::schema()),
        ("mmdebstrap", MmdebstrapStage::schema()),
    ];
    let mut one_of = OneOfBuilder::new().description(Some(
        "One stage of a pipeline, told by its `stage` property",
    ));
    for (tag, schema) in variants {
        let RefOr::T(Schema::Object(mut object)) = schema else {
            unreachable!("stage structs derive object schemas");
        };
        let tag_schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some([tag]));
        object.properties.insert("stage".into(), tag_schema.into());
        object.required.insert(0, "stage".into());
        one_of = one_of.item(object);
    }
    one_of.into()
}

impl utoipa::PartialSchema for Stage {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        stage_schema()
    }
}

impl ToSchema for Stage {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        FetchStage::schemas(schemas);
        ChecksumStage::schemas(schemas);
        SignatureStage::schemas(schemas);
        DecompressStage::schemas(schemas);
        ExtractStage::schemas(schemas);
        ConvertStage::schemas(schemas);
        InstallStage::schemas(schemas);
        KernelBuildStage::schemas(schemas);
        MmdebstrapStage::schemas(schemas);
    }
}
