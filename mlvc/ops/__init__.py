"""Operations on a repository, one module per verb group; Repo's methods call them."""
