//! The permission matrix, table-driven over the real `model.conf` and
//! default policy: every default role, bound at the south region, tried on
//! its own unit, a child (a store below), its sibling (the north region)
//! and its parent (HQ), for every operation and guarded field. Expectations
//! are written out here by hand from SPEC §2, not derived from the policy.

use serde_json::{Value, json};

use crate::helpers::{Snapshot, TestApp};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phone {
    Full,
    Masked,
    Hidden,
}

/// What a role may do in a unit where it is bound (own unit and children).
#[derive(Debug, Clone, Copy)]
struct Expect {
    create: bool,
    update: bool,
    /// Tag with a `basic` tag (渠道来源/线下展会).
    tag_basic: bool,
    /// Tag with a `service` tag (服务需求/售后咨询).
    tag_service: bool,
    write_library: bool,
    /// Proposes library edits (here and above) by change request.
    propose_library: bool,
    phone: Phone,
    birth_date: bool,
    spend: bool,
    sees_value_tags: bool,
    sees_service_tags: bool,
}

const fn all_but(phone: Phone) -> Expect {
    Expect {
        create: true,
        update: true,
        tag_basic: true,
        tag_service: true,
        write_library: true,
        propose_library: true,
        phone,
        birth_date: true,
        spend: true,
        sees_value_tags: true,
        sees_service_tags: true,
    }
}

fn expectations(role: &str) -> Expect {
    match role {
        // hq_admin holds no `propose`: where it may not write (above its
        // binding) it is refused.
        "hq_admin" => Expect { propose_library: false, ..all_but(Phone::Full) },
        "region_manager" => all_but(Phone::Full),
        "store_manager" => all_but(Phone::Masked),
        "sales" => {
            Expect { write_library: false, tag_service: false, sees_service_tags: false, ..all_but(Phone::Full) }
        }
        "customer_service" => Expect {
            create: false,
            update: false,
            tag_basic: false,
            tag_service: true,
            write_library: false,
            propose_library: false,
            phone: Phone::Masked,
            birth_date: true,
            spend: false,
            sees_value_tags: false,
            sees_service_tags: true,
        },
        "marketing" => Expect {
            create: false,
            update: false,
            write_library: false,
            propose_library: false,
            ..all_but(Phone::Masked)
        },
        "auditor" => Expect {
            create: false,
            update: false,
            tag_basic: false,
            tag_service: false,
            write_library: false,
            propose_library: false,
            phone: Phone::Masked,
            birth_date: false,
            spend: true,
            sees_value_tags: true,
            sees_service_tags: true,
        },
        other => panic!("no expectations for role {other}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Own,
    Child,
    Sibling,
    Parent,
}

impl Relation {
    fn unit(self) -> &'static str {
        match self {
            Relation::Own => "south",
            Relation::Child => "sz01",
            Relation::Sibling => "north",
            Relation::Parent => "hq",
        }
    }

    fn in_scope(self) -> bool {
        matches!(self, Relation::Own | Relation::Child)
    }

    /// The unit is known to the role (in scope, or an ancestor of it).
    fn visible(self) -> bool {
        self != Relation::Sibling
    }
}

struct Probe<'a> {
    app: &'a TestApp,
    role: &'a str,
    login: String,
}

impl Probe<'_> {
    async fn gql(&self, query: &str, vars: Value) -> crate::helpers::Gql {
        self.app.gql(&self.login, query, vars).await
    }

    /// Runs a mutation that must be refused with `code`, and checks that it
    /// changed nothing.
    async fn refused(&self, what: &str, code: &str, query: &str, vars: Value) {
        let before: Snapshot = self.app.snapshot().await;
        let res = self.gql(query, vars).await;
        assert_eq!(res.code(), code, "{} cannot {what}: {}", self.role, res.0);
        assert_eq!(self.app.snapshot().await, before, "{}'s refused attempt to {what} changed nothing", self.role);
    }
}

const READ: &str = "query($id: ID!) { customer(id: $id) { id name phone birthDate totalSpend orderCount lastOrderAt
    tags { tag { name group { visibilityClass } } } } }";
const CREATE: &str =
    "mutation($u: ID!) { createCustomer(input: { orgUnitId: $u, name: \"矩阵客户\" }) { customer { id } } }";
const UPDATE: &str = "mutation($id: ID!, $v: Int!) { updateCustomer(input: { id: $id, version: $v, city: \"佛山\" }) { customer { version } } }";
const TAG: &str = "mutation($c: ID!, $t: ID!) { tagCustomers(input: { customerIds: [$c], tagIds: [$t] }) { added } }";
const GROUP: &str = "mutation($u: ID!) { createTagGroup(input: { orgUnitId: $u, name: \"矩阵组\", category: BASIC, visibilityClass: \"basic\" }) { applied } }";

fn errors_at(res: &Value, field: &str) -> Vec<String> {
    res["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .filter(|e| e["path"].as_array().and_then(|p| p.last()).is_some_and(|last| last == field))
                .map(|e| e["extensions"]["code"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn check_role(mut app: TestApp, role: &str) {
    let expect = expectations(role);
    // A staff member holding only `role`, bound at the south region.
    let login = format!("probe.{role}");
    let member = entity::staff::ActiveModel {
        login: sea_orm::ActiveValue::Set(login.clone()),
        display_name: sea_orm::ActiveValue::Set(login.clone()),
        home_org_unit_id: sea_orm::ActiveValue::Set(app.unit("south")),
        active: sea_orm::ActiveValue::Set(true),
        created_at: sea_orm::ActiveValue::Set(chrono::Utc::now()),
        ..Default::default()
    };
    let member = sea_orm::ActiveModelTrait::insert(member, &app.db).await.unwrap();
    app.app.state.authz.assign_role(tagbase::domain::StaffId(member.id), role, "hq/south/").await.unwrap();
    app.register(member);
    let probe = Probe { app: &app, role, login: login.clone() };

    let basic = app.tag_id("渠道来源", "线下展会").await;
    let service = app.tag_id("服务需求", "售后咨询").await;
    let value = app.tag_id("消费等级", "S级").await;

    for relation in [Relation::Own, Relation::Child, Relation::Sibling, Relation::Parent] {
        let unit = relation.unit();
        let ctx = format!("{role} in {unit} ({relation:?})");
        // A customer of the unit, with a value and a service tag, made by
        // the admin.
        let created = app.gql("admin", CREATE, json!({ "u": app.unit_id(unit) })).await;
        let customer = created.ok()["createCustomer"]["customer"]["id"].as_str().unwrap().to_owned();
        app.gql("admin", TAG, json!({ "c": customer, "t": value })).await.ok();
        app.gql("admin", TAG, json!({ "c": customer, "t": service })).await.ok();
        app.gql(
            "admin",
            "mutation($id: ID!) { updateCustomer(input: { id: $id, version: 1, phone: \"13912345678\", birthDate: \"1990-05-01\" }) { customer { id } } }",
            json!({ "id": customer }),
        )
        .await
        .ok();

        // Reading, field by field.
        let res = probe.gql(READ, json!({ "id": customer })).await;
        if !relation.in_scope() {
            assert_eq!(res.code(), "NOT_FOUND", "{ctx}: cannot read the customer");
        } else {
            let c = &res.0["data"]["customer"];
            assert_eq!(c["id"], json!(customer), "{ctx}: reads the customer");
            let phone = match expect.phone {
                Phone::Full => json!("13912345678"),
                Phone::Masked => json!("139****5678"),
                Phone::Hidden => Value::Null,
            };
            assert_eq!(c["phone"], phone, "{ctx}: phone");
            assert_eq!(errors_at(&res.0, "phone").is_empty(), expect.phone != Phone::Hidden, "{ctx}: phone error");
            for (field, allowed) in [
                ("birthDate", expect.birth_date),
                ("totalSpend", expect.spend),
                ("orderCount", expect.spend),
                ("lastOrderAt", expect.spend),
            ] {
                let errors = errors_at(&res.0, field);
                if allowed {
                    assert!(errors.is_empty(), "{ctx}: reads {field}: {}", res.0);
                    if field != "lastOrderAt" {
                        assert!(!c[field].is_null(), "{ctx}: {field} has a value");
                    }
                } else {
                    assert_eq!(errors, vec!["FORBIDDEN_FIELD"], "{ctx}: cannot read {field}");
                    assert!(c[field].is_null(), "{ctx}: {field} is null");
                }
            }
            let classes: Vec<&str> = c["tags"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["tag"]["group"]["visibilityClass"].as_str())
                .collect();
            assert_eq!(classes.contains(&"value"), expect.sees_value_tags, "{ctx}: sees value tags {classes:?}");
            assert_eq!(classes.contains(&"service"), expect.sees_service_tags, "{ctx}: sees service tags {classes:?}");
        }

        // Creating a customer in the unit.
        let create_vars = json!({ "u": app.unit_id(unit) });
        if relation.in_scope() && expect.create {
            probe.gql(CREATE, create_vars).await.ok();
        } else {
            let code = if relation.visible() { "FORBIDDEN" } else { "NOT_FOUND" };
            probe.refused(&format!("create a customer in {unit}"), code, CREATE, create_vars).await;
        }

        // Updating it.
        let update_vars = json!({ "id": customer, "v": 2 });
        if relation.in_scope() && expect.update {
            probe.gql(UPDATE, update_vars).await.ok();
        } else {
            let code = if relation.in_scope() { "FORBIDDEN" } else { "NOT_FOUND" };
            probe.refused(&format!("update a customer of {unit}"), code, UPDATE, update_vars).await;
        }

        // Tagging it with a basic and with a service tag.
        for (tag, allowed, what) in [(&basic, expect.tag_basic, "basic"), (&service, expect.tag_service, "service")] {
            let vars = json!({ "c": customer, "t": tag });
            // The service tag is already on the customer (by the admin):
            // allowed tagging is then a no-op, but still allowed.
            if relation.in_scope() && allowed {
                probe.gql(TAG, vars).await.ok();
            } else {
                let sees_class = what == "basic" || expect.sees_service_tags;
                let code = if !relation.in_scope() || !sees_class { "NOT_FOUND" } else { "FORBIDDEN" };
                probe.refused(&format!("tag a customer of {unit} with a {what} tag"), code, TAG, vars).await;
            }
        }

        // Writing the tag library of the unit.
        let group_vars = json!({ "u": app.unit_id(unit) });
        if relation.in_scope() && expect.write_library {
            let res = probe.gql(GROUP, group_vars).await;
            assert_eq!(res.ok()["createTagGroup"]["applied"], true, "{ctx}: writes {unit}'s library");
        } else if relation.visible() && expect.propose_library {
            // Its own layers and those above: a change request, nothing applied.
            let before = app.snapshot().await;
            let res = probe.gql(GROUP, group_vars).await;
            assert_eq!(res.ok()["createTagGroup"]["applied"], false, "{ctx}: proposes for {unit}'s library");
            assert_eq!(app.snapshot().await.groups, before.groups, "{ctx}: a proposal creates no group");
        } else {
            let code = if relation.visible() { "FORBIDDEN" } else { "NOT_FOUND" };
            probe.refused(&format!("add a tag group to {unit}'s library"), code, GROUP, group_vars).await;
        }
    }
}

macro_rules! matrix {
    ($($role:ident),+ $(,)?) => {
        $(
            mod $role {
                use crate::helpers::{Backend, TestApp};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::check_role(TestApp::spawn(Backend::Sqlite).await, stringify!($role)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::check_role(TestApp::spawn(Backend::Postgres).await, stringify!($role)).await;
                }
            }
        )+
    };
}

matrix!(hq_admin, region_manager, store_manager, sales, customer_service, marketing, auditor);
