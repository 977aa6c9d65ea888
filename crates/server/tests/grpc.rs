//! Milvus's gRPC protocol on the REST port, through a real HTTP/2 connection with the
//! generated tonic client: the common calls, the bad-input classes (each a clear status,
//! nothing written, the server still up), the token, the size limit, unknown RPCs.
//! pymilvus itself runs against the binary in crates/cli/tests/pymilvus.rs.

use magpie_engine::{Engine, EngineConfig};
use magpie_milvus_proto::common::{
    self as cpb, KeyValuePair, PlaceholderGroup, PlaceholderType, PlaceholderValue,
};
use magpie_milvus_proto::milvus::milvus_service_client::MilvusServiceClient;
use magpie_milvus_proto::milvus::{self as mpb};
use magpie_milvus_proto::schema::{self as spb, field_data::Field, scalar_field, vector_field};
use magpie_server::{router, AppState};
use prost::Message;
use std::sync::Arc;
use tonic::transport::Channel;

#[path = "common/long_search.rs"]
mod long_search;

struct Server {
    addr: String,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(token: Option<&str>, max_body: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::open(dir.path(), EngineConfig::default()).unwrap());
    let st = Arc::new(AppState {
        engine,
        metrics: Default::default(),
        token: token.map(String::from),
        images: None,
        allowed_hosts: Some(Vec::new()),
        backups: None,
        inline: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let app = router(st, max_body);
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        addr,
        _dir: dir,
        task,
    }
}

async fn client(s: &Server) -> MilvusServiceClient<Channel> {
    let ch = Channel::from_shared(s.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    MilvusServiceClient::new(ch).max_decoding_message_size(usize::MAX)
}

fn kv(k: &str, v: &str) -> KeyValuePair {
    KeyValuePair {
        key: k.into(),
        value: v.into(),
    }
}

fn schema(dim: usize) -> Vec<u8> {
    spb::CollectionSchema {
        name: "c".into(),
        fields: vec![
            spb::FieldSchema {
                name: "id".into(),
                is_primary_key: true,
                data_type: spb::DataType::Int64 as i32,
                ..Default::default()
            },
            spb::FieldSchema {
                name: "v".into(),
                data_type: spb::DataType::FloatVector as i32,
                type_params: vec![kv("dim", &dim.to_string())],
                ..Default::default()
            },
            spb::FieldSchema {
                name: "tag".into(),
                data_type: spb::DataType::VarChar as i32,
                type_params: vec![kv("max_length", "16")],
                ..Default::default()
            },
        ],
        enable_dynamic_field: true,
        ..Default::default()
    }
    .encode_to_vec()
}

fn columns(ids: &[i64], dim: usize, claimed_dim: i64) -> Vec<spb::FieldData> {
    let n = ids.len();
    vec![
        spb::FieldData {
            field_name: "id".into(),
            r#type: spb::DataType::Int64 as i32,
            field: Some(Field::Scalars(spb::ScalarField {
                data: Some(scalar_field::Data::LongData(spb::LongArray {
                    data: ids.to_vec(),
                })),
            })),
            ..Default::default()
        },
        spb::FieldData {
            field_name: "v".into(),
            r#type: spb::DataType::FloatVector as i32,
            field: Some(Field::Vectors(spb::VectorField {
                dim: claimed_dim,
                data: Some(vector_field::Data::FloatVector(spb::FloatArray {
                    data: ids
                        .iter()
                        .flat_map(|&i| (0..dim).map(move |j| (i * 10 + j as i64) as f32))
                        .collect(),
                })),
            })),
            ..Default::default()
        },
        spb::FieldData {
            field_name: "tag".into(),
            r#type: spb::DataType::VarChar as i32,
            field: Some(Field::Scalars(spb::ScalarField {
                data: Some(scalar_field::Data::StringData(spb::StringArray {
                    data: ids.iter().map(|i| format!("t{}", i % 2)).collect(),
                })),
            })),
            ..Default::default()
        },
        spb::FieldData {
            field_name: "$meta".into(),
            is_dynamic: true,
            r#type: spb::DataType::Json as i32,
            field: Some(Field::Scalars(spb::ScalarField {
                data: Some(scalar_field::Data::JsonData(spb::JsonArray {
                    data: (0..n)
                        .map(|i| format!("{{\"color\":\"c{i}\"}}").into_bytes())
                        .collect(),
                })),
            })),
            ..Default::default()
        },
    ]
}

fn ok(s: Option<cpb::Status>) {
    let s = s.expect("a status");
    assert_eq!(s.code, 0, "{}", s.reason);
}

fn err(s: Option<cpb::Status>, code: i32, words: &[&str]) -> String {
    let s = s.expect("a status");
    assert_eq!(s.code, code, "{}", s.reason);
    for w in words {
        assert!(s.reason.contains(w), "'{}' should mention '{w}'", s.reason);
    }
    s.reason
}

async fn create(c: &mut MilvusServiceClient<Channel>, dim: usize) {
    let r = c
        .create_collection(mpb::CreateCollectionRequest {
            collection_name: "c".into(),
            schema: schema(dim),
            consistency_level: cpb::ConsistencyLevel::Strong as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(Some(r));
    let r = c
        .create_index(mpb::CreateIndexRequest {
            collection_name: "c".into(),
            field_name: "v".into(),
            extra_params: vec![
                kv("index_type", "HNSW"),
                kv("metric_type", "L2"),
                kv("params", r#"{"M": 8, "efConstruction": 40}"#),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(Some(r));
}

async fn count(c: &mut MilvusServiceClient<Channel>) -> i64 {
    let r = c
        .query(mpb::QueryRequest {
            collection_name: "c".into(),
            output_fields: vec!["count(*)".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    match &r.fields_data[0].field {
        Some(Field::Scalars(spb::ScalarField {
            data: Some(scalar_field::Data::LongData(a)),
        })) => a.data[0],
        other => panic!("count(*) column expected, got {other:?}"),
    }
}

fn placeholder(vectors: &[Vec<f32>]) -> Vec<u8> {
    PlaceholderGroup {
        placeholders: vec![PlaceholderValue {
            tag: "$0".into(),
            r#type: PlaceholderType::FloatVector as i32,
            values: vectors
                .iter()
                .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect())
                .collect(),
        }],
    }
    .encode_to_vec()
}

#[tokio::test]
async fn collection_insert_search_query_over_grpc() {
    let s = start(None, 64 << 20).await;
    let mut c = client(&s).await;
    let r = c
        .connect(mpb::ConnectRequest::default())
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    assert!(r.identifier > 0);
    create(&mut c, 4).await;

    let r = c
        .insert(mpb::InsertRequest {
            collection_name: "c".into(),
            fields_data: columns(&[1, 2, 3, 4], 4, 4),
            num_rows: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    assert_eq!(r.insert_cnt, 4);
    assert_eq!(
        r.i_ds.unwrap().id_field,
        Some(spb::i_ds::IdField::IntId(spb::LongArray {
            data: vec![1, 2, 3, 4]
        }))
    );
    assert_eq!(count(&mut c).await, 4);

    // Two queries; only even ids pass the filter: [31, 32, 33, 34] is nearest row 4
    // (81 × 4 away), then row 2 (121 × 4); [10, 11, 12, 13] is nearest row 2.
    let r = c
        .search(mpb::SearchRequest {
            collection_name: "c".into(),
            search_input: Some(mpb::search_request::SearchInput::PlaceholderGroup(
                placeholder(&[vec![31.0, 32.0, 33.0, 34.0], vec![10.0, 11.0, 12.0, 13.0]]),
            )),
            dsl: "tag == 't0'".into(),
            output_fields: vec!["tag".into(), "color".into()],
            search_params: vec![
                kv("anns_field", "v"),
                kv("topk", "2"),
                kv("metric_type", "L2"),
                kv("params", r#"{"ef": 16}"#),
            ],
            nq: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let res = r.results.unwrap();
    assert_eq!(res.num_queries, 2);
    assert_eq!(res.topks, vec![2, 2]);
    let Some(spb::i_ds::IdField::IntId(ids)) = res.ids.unwrap().id_field else {
        panic!("int ids expected")
    };
    assert_eq!(ids.data, vec![4, 2, 2, 4]);
    assert_eq!(res.scores[..2], [324.0, 484.0], "squared L2");
    let tag = res
        .fields_data
        .iter()
        .find(|f| f.field_name == "tag")
        .unwrap();
    let Some(Field::Scalars(spb::ScalarField {
        data: Some(scalar_field::Data::StringData(t)),
    })) = &tag.field
    else {
        panic!("tag column")
    };
    assert_eq!(t.data, vec!["t0"; 4]);
    let meta = res.fields_data.iter().find(|f| f.is_dynamic).unwrap();
    let Some(Field::Scalars(spb::ScalarField {
        data: Some(scalar_field::Data::JsonData(j)),
    })) = &meta.field
    else {
        panic!("$meta column")
    };
    assert_eq!(
        j.data[0],
        br#"{"color":"c3"}"#.to_vec(),
        "row 4 was the 4th inserted"
    );
    assert!(res.output_fields.contains(&"color".to_string()));

    // Grouped by tag: one hit per group, the group's value in group_by_field_value.
    let r = c
        .search(mpb::SearchRequest {
            collection_name: "c".into(),
            search_input: Some(mpb::search_request::SearchInput::PlaceholderGroup(
                placeholder(&[vec![31.0, 32.0, 33.0, 34.0]]),
            )),
            search_params: vec![
                kv("anns_field", "v"),
                kv("topk", "2"),
                kv("group_by_field", "tag"),
            ],
            nq: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let res = r.results.unwrap();
    let Some(Field::Scalars(spb::ScalarField {
        data: Some(scalar_field::Data::StringData(g)),
    })) = res.group_by_field_value.and_then(|f| f.field)
    else {
        panic!("group values expected")
    };
    assert_eq!(g.data, vec!["t1", "t0"], "row 3 (t1), then row 4 (t0)");
    assert!(
        res.fields_data.iter().all(|f| f.field_name != "tag"),
        "not asked for"
    );

    // Query by filter with limit and offset, output the vector.
    let r = c
        .query(mpb::QueryRequest {
            collection_name: "c".into(),
            expr: "id in [1, 2, 3]".into(),
            output_fields: vec!["v".into()],
            query_params: vec![kv("limit", "2"), kv("offset", "1")],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let v = r.fields_data.iter().find(|f| f.field_name == "v").unwrap();
    let Some(Field::Vectors(vf)) = &v.field else {
        panic!("vector column")
    };
    assert_eq!(vf.dim, 4);
    assert_eq!(
        vf.data,
        Some(vector_field::Data::FloatVector(spb::FloatArray {
            data: vec![20.0, 21.0, 22.0, 23.0, 30.0, 31.0, 32.0, 33.0]
        }))
    );

    let r = c
        .delete(mpb::DeleteRequest {
            collection_name: "c".into(),
            expr: "id in [1, 2]".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    assert_eq!(r.delete_cnt, 2);
    assert_eq!(count(&mut c).await, 2);

    let r = c
        .describe_collection(mpb::DescribeCollectionRequest {
            collection_name: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let sc = r.schema.unwrap();
    assert_eq!(
        sc.fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["id", "v", "tag"]
    );
    assert!(sc.enable_dynamic_field);
    assert_eq!(r.consistency_level, cpb::ConsistencyLevel::Strong as i32);

    let r = c
        .describe_index(mpb::DescribeIndexRequest {
            collection_name: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let d = &r.index_descriptions[0];
    assert_eq!(d.field_name, "v");
    assert!(
        d.params.contains(&kv("index_type", "HNSW")),
        "{:?}",
        d.params
    );
    assert_eq!(d.state, cpb::IndexState::Finished as i32);

    let r = c
        .show_collections(mpb::ShowCollectionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    assert_eq!(r.collection_names, vec!["c"]);
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_writes_nothing() {
    let s = start(None, 64 << 20).await;
    let mut c = client(&s).await;
    create(&mut c, 4).await;
    let insert = |fields: Vec<spb::FieldData>, n: u32| mpb::InsertRequest {
        collection_name: "c".into(),
        fields_data: fields,
        num_rows: n,
        ..Default::default()
    };
    // Vectors of the wrong dimension (declared and actual).
    let r = c.insert(insert(columns(&[1, 2], 3, 3), 2)).await.unwrap();
    err(r.into_inner().status, 1100, &["dim"]);
    // A dimension that does not divide the data.
    let r = c.insert(insert(columns(&[1, 2], 4, 3), 2)).await.unwrap();
    err(
        r.into_inner().status,
        1100,
        &["field 'v'", "not a whole number"],
    );
    // num_rows disagreeing with the columns.
    let r = c.insert(insert(columns(&[1, 2], 4, 4), 3)).await.unwrap();
    err(r.into_inner().status, 1100, &["2 values for 3 rows"]);
    // A dynamic field that is not JSON.
    let mut cols = columns(&[1], 4, 4);
    cols[3].field = Some(Field::Scalars(spb::ScalarField {
        data: Some(scalar_field::Data::JsonData(spb::JsonArray {
            data: vec![b"{nope".to_vec()],
        })),
    }));
    let r = c.insert(insert(cols, 1)).await.unwrap();
    err(r.into_inner().status, 1100, &["not valid JSON"]);
    // An unsupported vector type names itself.
    let mut cols = columns(&[1], 4, 4);
    cols[1].field = Some(Field::Vectors(spb::VectorField {
        dim: 4,
        data: Some(vector_field::Data::Int8Vector(vec![0; 4])),
    }));
    let r = c.insert(insert(cols, 1)).await.unwrap();
    err(
        r.into_inner().status,
        1100,
        &["int8 vectors are not supported"],
    );
    // Binary data for a FloatVector field is refused by kind.
    let mut cols = columns(&[1], 4, 4);
    cols[1].field = Some(Field::Vectors(spb::VectorField {
        dim: 4,
        data: Some(vector_field::Data::BinaryVector(vec![0])),
    }));
    let r = c.insert(insert(cols, 1)).await.unwrap();
    err(
        r.into_inner().status,
        1100,
        &["FloatVector", "BinaryVector data"],
    );
    // Half-precision bytes of the right length for a FloatVector field: refused by kind.
    let mut cols = columns(&[1], 4, 4);
    cols[1].field = Some(Field::Vectors(spb::VectorField {
        dim: 4,
        data: Some(vector_field::Data::Float16Vector(vec![0; 8])),
    }));
    let r = c.insert(insert(cols, 1)).await.unwrap();
    err(
        r.into_inner().status,
        1100,
        &["is a FloatVector", "Float16Vector data"],
    );
    assert_eq!(count(&mut c).await, 0, "nothing was written");

    // A schema that is not protobuf; an unknown data type.
    let r = c
        .create_collection(mpb::CreateCollectionRequest {
            collection_name: "d".into(),
            schema: vec![0xff, 0xff, 0xff],
            ..Default::default()
        })
        .await
        .unwrap();
    err(
        Some(r.into_inner()),
        1100,
        &["not a valid CollectionSchema"],
    );
    let bad_type = spb::CollectionSchema {
        fields: vec![spb::FieldSchema {
            name: "g".into(),
            data_type: spb::DataType::Geometry as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let r = c
        .create_collection(mpb::CreateCollectionRequest {
            collection_name: "d".into(),
            schema: bad_type.encode_to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
    err(Some(r.into_inner()), 1100, &["field 'g'", "Geometry"]);

    // Unknown collection (the deprecated error_code is what pymilvus's has_collection
    // tests), unknown database, malformed filter, wrong query vector length.
    let r = c
        .describe_collection(mpb::DescribeCollectionRequest {
            collection_name: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let st = r.status.clone().unwrap();
    #[allow(deprecated)]
    let ec = st.error_code;
    assert_eq!(ec, cpb::ErrorCode::CollectionNotExists as i32);
    err(r.status, 100, &["nope"]);
    let r = c
        .show_collections(mpb::ShowCollectionsRequest {
            db_name: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    err(r.into_inner().status, 800, &["database", "other"]);
    let r = c
        .query(mpb::QueryRequest {
            collection_name: "c".into(),
            expr: "id >>> 3".into(),
            query_params: vec![kv("limit", "3")],
            ..Default::default()
        })
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &[]);
    let r = c
        .search(mpb::SearchRequest {
            collection_name: "c".into(),
            search_input: Some(mpb::search_request::SearchInput::PlaceholderGroup(
                placeholder(&[vec![1.0, 2.0, 3.0]]),
            )),
            search_params: vec![kv("topk", "3")],
            ..Default::default()
        })
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &["dim"]);
    let r = c
        .search(mpb::SearchRequest {
            collection_name: "c".into(),
            search_input: Some(mpb::search_request::SearchInput::PlaceholderGroup(vec![
                1, 2, 3,
            ])),
            ..Default::default()
        })
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &["placeholder_group"]);

    // RunAnalyzer: bad params, text that is not UTF-8, too much text at once.
    let run = |params: &str, texts: Vec<Vec<u8>>| mpb::RunAnalyzerRequest {
        analyzer_params: params.into(),
        placeholder: texts,
        ..Default::default()
    };
    let r = c
        .run_analyzer(run(
            r#"{"type": "english"}"#,
            vec![b"The Running dogs".to_vec()],
        ))
        .await
        .unwrap()
        .into_inner();
    ok(r.status);
    let toks: Vec<_> = r.results[0]
        .tokens
        .iter()
        .map(|t| t.token.as_str())
        .collect();
    assert_eq!(toks, ["run", "dog"]);
    let r = c.run_analyzer(run("{", vec![])).await.unwrap();
    err(r.into_inner().status, 1100, &["analyzer_params"]);
    let r = c
        .run_analyzer(run(r#"{"tokenizer": "nope"}"#, vec![]))
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &["nope"]);
    let r = c
        .run_analyzer(run("", vec![vec![0xff, 0xfe]]))
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &["text 0", "UTF-8"]);
    let r = c
        .run_analyzer(run("", vec![vec![b'a'; 600 << 10], vec![b'b'; 600 << 10]]))
        .await
        .unwrap();
    err(r.into_inner().status, 1100, &["at most"]);

    let h = c
        .check_health(mpb::CheckHealthRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(h.is_healthy);
}

#[tokio::test]
async fn token_size_limit_malformed_and_unknown_rpcs() {
    use base64::Engine as _;
    let s = start(Some("s3cret"), 64 * 1024).await;
    let mut c = client(&s).await;
    let e = c
        .get_version(mpb::GetVersionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert!(e.message().contains("token"), "{}", e.message());

    let with = |v: &str| {
        let mut r = tonic::Request::new(mpb::GetVersionRequest::default());
        r.metadata_mut().insert("authorization", v.parse().unwrap());
        r
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    assert!(c.get_version(with(&b64.encode("s3cret"))).await.is_ok());
    assert!(c.get_version(with("Bearer s3cret")).await.is_ok());
    let e = c.get_version(with(&b64.encode("s3cre"))).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    // With the token from here on.
    let token = b64.encode("s3cret");
    let auth = move |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("authorization", token.parse().unwrap());
        Ok(r)
    };
    let ch = Channel::from_shared(s.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut c = MilvusServiceClient::with_interceptor(ch.clone(), auth.clone());
    create_with(&mut c).await;

    // Over the 64 KiB limit: RESOURCE_EXHAUSTED naming it; the server stays up.
    let ids: Vec<i64> = (0..5000).collect();
    let e = c
        .insert(mpb::InsertRequest {
            collection_name: "c".into(),
            fields_data: columns(&ids, 4, 4),
            num_rows: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("65536 bytes"), "{}", e.message());

    // A message that is not the request's protobuf: field 3 (a string) sent as a number.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Bad {
        #[prost(uint64, tag = "3")]
        x: u64,
    }
    let mut g = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        ch.clone(),
        auth.clone(),
    ));
    g.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Bad, cpb::Status>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/milvus.proto.milvus.MilvusService/CreateCollection",
    );
    let e = g
        .unary(tonic::Request::new(Bad { x: 7 }), path, codec)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("malformed request"), "{}", e.message());

    // An RPC Magpie does not implement, and a service that is not Milvus's.
    let e = c
        .list_cred_users(mpb::ListCredUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
    assert!(e.message().contains("ListCredUsers"), "{}", e.message());
    g.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<Bad, cpb::Status>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/other.Service/Method");
    let e = g
        .unary(tonic::Request::new(Bad { x: 7 }), path, codec)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    assert!(
        e.message().contains("/other.Service/Method"),
        "{}",
        e.message()
    );

    let h = c
        .check_health(mpb::CheckHealthRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(h.is_healthy);
}

async fn create_with<T>(c: &mut MilvusServiceClient<T>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let r = c
        .create_collection(mpb::CreateCollectionRequest {
            collection_name: "c".into(),
            schema: schema(4),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    ok(Some(r));
}

/// A call past its client's deadline: the client's own deadline error, or the server's
/// reply status naming the limit (`words`), whichever came first.
fn past_deadline(res: Result<Option<cpb::Status>, tonic::Status>, words: &str) {
    match res {
        Err(s) => assert!(
            matches!(
                s.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{s:?}"
        ),
        Ok(status) => {
            err(status, 65535, &[words]);
        }
    }
}

/// A client's deadline (`grpc-timeout`, what pymilvus's `timeout=` sends) stops a
/// search or query in the engine: the client gets its deadline error, or the server's reply
/// naming the limit, whichever comes first; either way the scan, seconds long, ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_or_query_past_the_clients_deadline_is_stopped() {
    let (app, _dir) = long_search::server(Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let served = app.clone();
    let task = tokio::spawn(async move { axum::serve(listener, served).await.unwrap() });
    let mut c =
        MilvusServiceClient::new(Channel::from_shared(addr).unwrap().connect().await.unwrap())
            .max_encoding_message_size(64 << 20);
    let queries = long_search::queries();
    let mut req = tonic::Request::new(mpb::SearchRequest {
        collection_name: "c".into(),
        search_input: Some(mpb::search_request::SearchInput::PlaceholderGroup(
            placeholder(&queries),
        )),
        search_params: vec![
            kv("anns_field", "vec"),
            kv("topk", "10"),
            kv("metric_type", "L2"),
        ],
        nq: queries.len() as i64,
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_millis(50));
    let res = c.search(req).await.map(|r| r.into_inner().status);
    past_deadline(res, "search ran past its time limit of 50 ms");
    long_search::wait_for_counters(&app, "after the deadline", |(c, r)| c == 1 && r == 0).await;
    // A query is stopped the same way: every row with its vector, past a 50 ms deadline.
    let mut req = tonic::Request::new(mpb::QueryRequest {
        collection_name: "c".into(),
        expr: "id >= 0".into(),
        output_fields: vec!["id".into(), "vec".into()],
        ..Default::default()
    });
    req.set_timeout(std::time::Duration::from_millis(50));
    let res = c.query(req).await.map(|r| r.into_inner().status);
    past_deadline(res, "query ran past its time limit of 50 ms");
    long_search::wait_for_queries_cancelled(&app, "query after the deadline", 1).await;
    task.abort();
}
