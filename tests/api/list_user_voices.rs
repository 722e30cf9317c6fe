use std::collections::HashSet;

use chrono::{Duration, Utc};
use uuid::Uuid;
use voicehub::{
    pb::{self, ListUserVoicesRequest, VoiceScope},
    store::{self, Visibility, Voice, VoiceStatus},
};

use crate::{
    helpers::{Backend, Client, TestApp, assert_invalid_field, spawn_app, voice},
    on_both_backends,
};

fn request(scope: VoiceScope, page_size: i32, page_token: &str) -> ListUserVoicesRequest {
    ListUserVoicesRequest {
        page_size,
        page_token: page_token.to_owned(),
        scope: scope as i32,
        status: 0,
    }
}

/// Every voice id of a listing, following page tokens to the end.
async fn list_all(client: &mut Client, mut req: ListUserVoicesRequest) -> (Vec<String>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    loop {
        let page = client
            .list_user_voices(req.clone())
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.voices.len() <= usize::try_from(req.page_size.max(1)).unwrap());
        ids.extend(page.voices.into_iter().map(|v| v.voice_id));
        if page.next_page_token.is_empty() {
            return (ids, pages);
        }
        req.page_token = page.next_page_token;
    }
}

/// Seeds `n` voices with distinct, known creation times, some sharing a timestamp
/// so that the id tie-break is exercised too.
async fn seed_many(
    app: &TestApp,
    owner: Uuid,
    visibility: Visibility,
    n: usize,
    base: chrono::DateTime<Utc>,
) -> Vec<Voice> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = base + Duration::milliseconds(i64::try_from(i / 3).unwrap());
        out.push(
            app.insert(voice(owner, visibility, VoiceStatus::Completed, at))
                .await,
        );
    }
    out
}

fn newest_first(voices: &[Voice]) -> Vec<String> {
    let mut sorted: Vec<_> = voices.iter().collect();
    sorted.sort_by_key(|v| std::cmp::Reverse((v.created_at, v.id)));
    sorted.into_iter().map(|v| v.id.to_string()).collect()
}

async fn user_never_sees_another_users_private_voice_in_any_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let alice_private = app
        .seed(alice, Visibility::Private, VoiceStatus::Completed)
        .await;
    let alice_public = app
        .seed(alice, Visibility::Public, VoiceStatus::Completed)
        .await;
    let bob_private = app
        .seed(bob, Visibility::Private, VoiceStatus::Completed)
        .await;
    let bob_public = app
        .seed(bob, Visibility::Public, VoiceStatus::Processing)
        .await;
    let mut client = app.client(alice);
    let ids = |r: pb::ListUserVoicesResponse| -> HashSet<String> {
        r.voices.into_iter().map(|v| v.voice_id).collect()
    };
    let set = |vs: &[&Voice]| -> HashSet<String> { vs.iter().map(|v| v.id.to_string()).collect() };

    for scope in [VoiceScope::Unspecified, VoiceScope::Owned] {
        let got = ids(client
            .list_user_voices(request(scope, 0, ""))
            .await
            .unwrap()
            .into_inner());
        assert_eq!(got, set(&[&alice_private, &alice_public]), "{scope:?}");
    }
    let got = ids(client
        .list_user_voices(request(VoiceScope::Public, 0, ""))
        .await
        .unwrap()
        .into_inner());
    assert_eq!(got, set(&[&alice_public, &bob_public]));
    let got = ids(client
        .list_user_voices(request(VoiceScope::All, 0, ""))
        .await
        .unwrap()
        .into_inner());
    assert_eq!(got, set(&[&alice_private, &alice_public, &bob_public]));
    assert!(!got.contains(&bob_private.id.to_string()));
}

async fn pagination_returns_every_voice_once_in_newest_first_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let base = store::now() - Duration::hours(1);
    // Interleaved creation times across owners, so the ALL merge is exercised.
    let mut own = seed_many(&app, alice, Visibility::Private, 100, base).await;
    own.extend(
        seed_many(
            &app,
            alice,
            Visibility::Public,
            25,
            base + Duration::microseconds(500),
        )
        .await,
    );
    let others_public = seed_many(
        &app,
        bob,
        Visibility::Public,
        40,
        base + Duration::microseconds(250),
    )
    .await;
    seed_many(&app, carol, Visibility::Private, 10, base).await;
    let mut client = app.client(alice);

    let (ids, pages) = list_all(&mut client, request(VoiceScope::Owned, 7, "")).await;
    assert_eq!(ids, newest_first(&own));
    assert_eq!(pages, 125usize.div_ceil(7));

    let everything: Vec<Voice> = own.iter().chain(&others_public).cloned().collect();
    let (ids, _) = list_all(&mut client, request(VoiceScope::All, 11, "")).await;
    assert_eq!(ids.len(), 165);
    assert_eq!(ids, newest_first(&everything));

    let public: Vec<Voice> = everything
        .iter()
        .filter(|v| v.visibility == Visibility::Public)
        .cloned()
        .collect();
    let (ids, _) = list_all(&mut client, request(VoiceScope::Public, 13, "")).await;
    assert_eq!(ids, newest_first(&public));
}

async fn page_size_defaults_to_50_and_is_capped_at_200(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    seed_many(&app, owner, Visibility::Private, 205, store::now()).await;
    let mut client = app.client(owner);
    let page = client
        .list_user_voices(request(VoiceScope::Owned, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.voices.len(), 50);
    assert!(!page.next_page_token.is_empty());
    let page = client
        .list_user_voices(request(VoiceScope::Owned, 1000, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.voices.len(), 200);
    let rest = client
        .list_user_voices(request(VoiceScope::Owned, 1000, &page.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.voices.len(), 5);
    assert!(
        rest.next_page_token.is_empty(),
        "the last page has no token"
    );
}

async fn an_exactly_full_last_page_has_no_next_token(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    seed_many(&app, owner, Visibility::Private, 10, store::now()).await;
    let page = app
        .client(owner)
        .list_user_voices(request(VoiceScope::Owned, 10, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.voices.len(), 10);
    assert!(page.next_page_token.is_empty());
}

async fn status_filter_selects_one_status_and_unspecified_hides_deleted(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    let mut by_status = Vec::new();
    for status in [
        VoiceStatus::Processing,
        VoiceStatus::Completed,
        VoiceStatus::Failed,
        VoiceStatus::Deleted,
    ] {
        by_status.push((status, app.seed(owner, Visibility::Public, status).await));
    }
    let mut client = app.client(owner);
    for (status, wire) in [
        (VoiceStatus::Processing, pb::VoiceStatus::Processing),
        (VoiceStatus::Completed, pb::VoiceStatus::Completed),
        (VoiceStatus::Failed, pb::VoiceStatus::Failed),
    ] {
        for scope in [VoiceScope::Owned, VoiceScope::Public, VoiceScope::All] {
            let mut req = request(scope, 0, "");
            req.status = wire as i32;
            let got: Vec<_> = client
                .list_user_voices(req)
                .await
                .unwrap()
                .into_inner()
                .voices;
            let expected = &by_status.iter().find(|(s, _)| *s == status).unwrap().1;
            assert_eq!(got.len(), 1, "{status:?} {scope:?}");
            assert_eq!(got[0].voice_id, expected.id.to_string());
        }
    }
    for scope in [VoiceScope::Owned, VoiceScope::Public, VoiceScope::All] {
        let got = client
            .list_user_voices(request(scope, 0, ""))
            .await
            .unwrap()
            .into_inner()
            .voices;
        assert_eq!(got.len(), 3, "{scope:?}");
        assert!(
            got.iter()
                .all(|v| v.status != pb::VoiceStatus::Deleted as i32)
        );
    }
}

async fn every_invalid_list_argument_is_refused_naming_its_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let owner = Uuid::new_v4();
    seed_many(&app, owner, Visibility::Public, 3, store::now()).await;
    let mut client = app.client(owner);
    let token = client
        .list_user_voices(request(VoiceScope::Owned, 1, ""))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());

    let mut cases: Vec<(&str, ListUserVoicesRequest, &str)> = vec![
        (
            "negative page_size",
            request(VoiceScope::Owned, -1, ""),
            "page_size",
        ),
        (
            "garbage token",
            request(VoiceScope::Owned, 1, "%%%not-a-token"),
            "page_token",
        ),
        (
            "base64 but not a token",
            request(VoiceScope::Owned, 1, "aGVsbG8"),
            "page_token",
        ),
        (
            "token of another scope",
            request(VoiceScope::Public, 1, &token),
            "page_token",
        ),
        (
            "unknown scope",
            ListUserVoicesRequest {
                scope: 99,
                ..Default::default()
            },
            "scope",
        ),
        (
            "unknown status",
            ListUserVoicesRequest {
                status: 42,
                ..Default::default()
            },
            "status",
        ),
        (
            "deleted status",
            ListUserVoicesRequest {
                status: pb::VoiceStatus::Deleted as i32,
                ..Default::default()
            },
            "status",
        ),
    ];
    let mut other_filter = request(VoiceScope::Owned, 1, &token);
    other_filter.status = pb::VoiceStatus::Completed as i32;
    cases.push(("token of another status filter", other_filter, "page_token"));
    for (case, req, field) in cases {
        let status = client.list_user_voices(req).await.expect_err(case);
        assert_invalid_field(&status, field);
    }
    // The same token presented by another user.
    let status = app
        .client(Uuid::new_v4())
        .list_user_voices(request(VoiceScope::Owned, 1, &token))
        .await
        .unwrap_err();
    assert_invalid_field(&status, "page_token");
}

on_both_backends!(
    user_never_sees_another_users_private_voice_in_any_scope,
    pagination_returns_every_voice_once_in_newest_first_order,
    page_size_defaults_to_50_and_is_capped_at_200,
    an_exactly_full_last_page_has_no_next_token,
    status_filter_selects_one_status_and_unspecified_hides_deleted,
    every_invalid_list_argument_is_refused_naming_its_field,
);
